"""Crafted and corrupted GGUF files: each must fail fast, in bounded memory, naming the file."""

from __future__ import annotations

import re
import struct
import time
import tracemalloc
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType, GGUFValueType, quants

from heron.loader.gguf import GGUFError, GGUFFile

V = GGUFValueType
T = GGMLQuantizationType
U64_MAX = (1 << 64) - 1


def gstr(text: str | bytes) -> bytes:
    raw = text.encode() if isinstance(text, str) else text
    return struct.pack("<Q", len(raw)) + raw


def kv(key: str, vtype: int, payload: bytes) -> bytes:
    return gstr(key) + struct.pack("<I", vtype) + payload


def kv_u32(key: str, value: int) -> bytes:
    return kv(key, V.UINT32, struct.pack("<I", value))


def tensor_info(name: str, dims: list[int], ggml_type: int = T.F32, offset: int = 0) -> bytes:
    head = gstr(name) + struct.pack("<I", len(dims))
    return (
        head + b"".join(struct.pack("<Q", d) for d in dims) + struct.pack("<IQ", ggml_type, offset)
    )


ARCH = kv("general.architecture", V.STRING, gstr("llama"))
GOOD_TENSOR = tensor_info("a", [8])
GOOD_DATA = np.arange(8, dtype=np.float32).tobytes()


def build(
    kvs: list[bytes] | None = None,
    infos: list[bytes] | None = None,
    data: bytes = GOOD_DATA,
    *,
    n_kv: int | None = None,
    n_tensors: int | None = None,
    version: int = 3,
    magic: bytes = b"GGUF",
    alignment: int = 32,
) -> bytes:
    kvs = [ARCH] if kvs is None else kvs
    infos = [GOOD_TENSOR] if infos is None else infos
    counts = (
        n_tensors if n_tensors is not None else len(infos),
        n_kv if n_kv is not None else len(kvs),
    )
    body = magic + struct.pack("<IQQ", version, *counts) + b"".join(kvs) + b"".join(infos)
    return body + b"\0" * (-len(body) % alignment) + data


def assert_rejected(path: Path, pattern: str) -> GGUFError:
    """GGUFFile(path) raises a GGUFError naming the file, fast and with bounded memory."""
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(GGUFError) as info:
            GGUFFile(path)
        elapsed = time.perf_counter() - start
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    message = str(info.value)
    assert message.startswith(f"{path}: "), message
    assert re.search(pattern, message), message
    assert elapsed < 0.5, f"took {elapsed:.3f} s"
    assert peak < 50 << 20, f"peak {peak} bytes"
    return info.value


def test_baseline_file_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "ok.gguf"
    path.write_bytes(build())
    with GGUFFile(path) as g:
        assert g.metadata == {"general.architecture": "llama"}
        assert torch.equal(g.load("a"), torch.arange(8, dtype=torch.float32))


CASES: dict[str, tuple[Callable[[], bytes], str]] = {
    "empty": (lambda: b"", "empty"),
    "four_bytes": (lambda: b"GGUF", "truncated: 4 bytes"),
    "short_header": (lambda: build()[:23], "truncated: 23 bytes"),
    "bad_magic": (lambda: build(magic=b"GGML"), "bad magic"),
    "version_1": (lambda: build(version=1), "unsupported GGUF version 1"),
    "version_huge": (lambda: build(version=0xFFFFFFFF), "unsupported GGUF version"),
    "big_endian": (lambda: build(version=0x03000000), "big-endian"),
    "tensor_count_2e62": (lambda: build(n_tensors=2**62), "tensor count"),
    "tensor_count_max": (lambda: build(n_tensors=U64_MAX), "tensor count"),
    "kv_count_2e62": (lambda: build(n_kv=2**62), "metadata count"),
    "kv_count_max": (lambda: build(n_kv=U64_MAX), "metadata count"),
    "kv_count_past_file": (
        lambda: build(n_kv=3, infos=[], data=b"", alignment=1),
        "truncated: length of key",
    ),
    "key_length_2e60": (
        lambda: build([struct.pack("<Q", 2**60) + b"k" * 16]),
        "length 1152921504606846976",
    ),
    "string_value_2e60": (
        lambda: build([kv("s", V.STRING, struct.pack("<Q", 2**60) + b"x" * 16)]),
        "length 1152921504606846976",
    ),
    "string_value_2e63": (
        lambda: build([kv("s", V.STRING, struct.pack("<Q", 2**63) + b"x" * 16)]),
        "above the cap",
    ),
    "string_past_file": (
        lambda: build([kv("s", V.STRING, struct.pack("<Q", 4000) + b"x" * 16)]),
        "truncated",
    ),
    "array_count_2e60": (
        lambda: build([kv("a", V.ARRAY, struct.pack("<IQ", V.UINT8, 2**60))]),
        "1152921504606846976 items",
    ),
    "array_count_2e63_strings": (
        lambda: build([kv("a", V.ARRAY, struct.pack("<IQ", V.STRING, 2**63))]),
        "items",
    ),
    "array_past_file": (
        lambda: build([kv("a", V.ARRAY, struct.pack("<IQ", V.UINT64, 1000))]),
        "truncated: metadata 'a' claims 1000 items",
    ),
    "string_array_item_2e62": (
        lambda: build([kv("a", V.ARRAY, struct.pack("<IQQ", V.STRING, 2, 2**62) + b"z" * 40)]),
        r"metadata 'a'\[0\] has length",
    ),
    "nested_arrays_too_deep": (
        lambda: build([kv("a", V.ARRAY, struct.pack("<IQIQIQ", V.ARRAY, 1, V.ARRAY, 1, 0, 0))]),
        "nested deeper",
    ),
    "unknown_value_type": (lambda: build([kv("x", 13, b"\0" * 8)]), "unknown value type 13"),
    "unknown_array_item_type": (
        lambda: build([kv("x", V.ARRAY, struct.pack("<IQ", 99, 1))]),
        "unknown value type 99",
    ),
    "empty_key": (lambda: build([kv("", V.UINT8, b"\1")]), "empty key"),
    "duplicate_key": (lambda: build([ARCH, ARCH]), "duplicate metadata key"),
    "alignment_0": (lambda: build([kv_u32("general.alignment", 0)]), "power of two, got 0"),
    "alignment_48": (lambda: build([kv_u32("general.alignment", 48)]), "power of two, got 48"),
    "alignment_string": (
        lambda: build([kv("general.alignment", V.STRING, gstr("32"))]),
        "must be an integer",
    ),
    "zero_dims": (lambda: build(infos=[tensor_info("a", [])]), "0 dims"),
    "five_dims": (lambda: build(infos=[tensor_info("a", [1, 1, 1, 1, 8])]), "5 dims"),
    "n_dims_max": (lambda: build(infos=[gstr("a") + struct.pack("<I", 2**32 - 1)]), "dims"),
    "zero_dim": (lambda: build(infos=[tensor_info("a", [8, 0])]), "invalid dimension 0"),
    "negative_dim": (lambda: build(infos=[tensor_info("a", [U64_MAX])]), "invalid dimension"),
    "dims_overflow_2e40": (
        lambda: build(infos=[tensor_info("a", [2**40, 2**40])]),
        "overflow int64",
    ),
    "dims_overflow_2e63": (
        lambda: build(infos=[tensor_info("a", [2**32, 2**31])]),
        "overflow int64",
    ),
    "nbytes_beyond_file": (
        lambda: build(infos=[tensor_info("a", [2**20, 2**20])]),
        "needs 4398046511104 bytes",
    ),
    "unknown_ggml_type": (lambda: build(infos=[tensor_info("a", [8], 4)]), "unknown ggml type 4"),
    "unknown_ggml_type_huge": (
        lambda: build(infos=[tensor_info("a", [8], 1000)]),
        "unknown ggml type 1000",
    ),
    "not_whole_blocks": (
        lambda: build(infos=[tensor_info("a", [16], T.Q8_0)]),
        "not a multiple of the block size 32",
    ),
    "offset_past_end": (
        lambda: build(infos=[tensor_info("a", [8], offset=64)]),
        "runs past the end of the file",
    ),
    "offset_2e63": (
        lambda: build(infos=[tensor_info("a", [8], offset=2**63)]),
        "runs past the end",
    ),
    "size_past_end": (
        lambda: build(infos=[tensor_info("a", [16])]),
        "runs past the end of the file",
    ),
    "misaligned_offset": (
        lambda: build(infos=[tensor_info("a", [4], offset=4)]),
        "not aligned to 32",
    ),
    "overlapping_tensors": (
        lambda: build(infos=[tensor_info("a", [8]), tensor_info("b", [8])]),
        "overlaps",
    ),
    "duplicate_tensor": (
        lambda: build(
            infos=[tensor_info("a", [4]), tensor_info("a", [4], offset=32)], data=GOOD_DATA * 2
        ),
        "duplicate tensor name",
    ),
    "tensor_info_truncated": (lambda: build(infos=[gstr("a")], data=b""), "truncated"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_crafted_file_is_rejected(tmp_path: Path, case: str) -> None:
    make, pattern = CASES[case]
    path = tmp_path / f"{case}.gguf"
    path.write_bytes(make())
    assert_rejected(path, pattern)


def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(GGUFError, match="cannot open"):
        GGUFFile(tmp_path / "missing.gguf")
    with pytest.raises(GGUFError, match="not a regular file|cannot open"):
        GGUFFile(tmp_path)


def test_valid_header_with_undequantizable_type(tmp_path: Path) -> None:
    path = tmp_path / "iq4.gguf"
    path.write_bytes(build(infos=[tensor_info("a", [32], T.IQ4_NL)], data=b"\0" * 18))
    with GGUFFile(path) as g:
        assert g.raw("a").nbytes == 18
        with pytest.raises(GGUFError, match=r"tensor 'a'.*IQ4_NL"):
            g.load("a")


def test_truncated_file_is_rejected_at_every_cut(
    tmp_path: Path, make_gguf: Callable[..., Path]
) -> None:
    rng = np.random.default_rng(0)
    q8 = quants.quantize(rng.standard_normal((2, 64)).astype(np.float32), T.Q8_0)
    src = make_gguf(
        tmp_path / "full.gguf",
        "llama",
        {
            "general.name": "tiny",
            "llama.block_count": 1,
            "llama.rope.freq_base": 10000.0,
            "tokenizer.ggml.add_bos_token": True,
            "tokenizer.ggml.tokens": ["<s>", "</s>", "héllo"],
            "tokenizer.ggml.token_type": [3, 3, 1],
        },
        {
            "f32": rng.standard_normal((4, 8)).astype(np.float32),
            "q8": q8,
            "f16": rng.standard_normal((3, 16)).astype(np.float16),
        },
        {"q8": T.Q8_0},
    )
    full = src.read_bytes()
    with GGUFFile(src) as g:
        assert g.metadata["tokenizer.ggml.tokens"][2] == "héllo"
        assert g.tensors["q8"].shape == (2, 64)
        end = max(t.offset + t.nbytes for t in g.tensors.values())
        header_end = g.data_offset
    # Every 7th byte through the header, then through the data up to the last tensor byte.
    cuts = sorted({*range(0, header_end, 7), *range(header_end, end, 13), end - 1})
    assert len(cuts) > 50
    for cut in cuts:
        path = tmp_path / "cut.gguf"
        path.write_bytes(full[:cut])
        assert_rejected(path, "truncated|empty|past the end|bad magic|cannot fit")
