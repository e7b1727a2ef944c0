"""GGUFFile on the real SmolLM2-135M Q4_1 file, checked against gguf-py's reader."""

from __future__ import annotations

import time
from collections import Counter

import gguf
import numpy as np
import pytest
import torch

from heron.loader.gguf import GGUFError, GGUFFile

T = gguf.GGMLQuantizationType


def test_header_loads_fast(smollm2_path: str) -> None:
    best = float("inf")
    for _ in range(3):
        start = time.perf_counter()
        GGUFFile(smollm2_path).close()
        best = min(best, time.perf_counter() - start)
    print(f"SmolLM2 header parse: {best * 1e3:.1f} ms")
    assert best < 1.0


def test_metadata(smollm2: GGUFFile) -> None:
    md = smollm2.metadata
    assert smollm2.version == 3 and smollm2.alignment == 32
    assert smollm2.architecture == "llama"
    assert md["llama.block_count"] == 30
    assert md["llama.embedding_length"] == 576
    assert md["llama.attention.head_count_kv"] == 3
    assert md["llama.rope.freq_base"] == 100000.0
    assert md["llama.attention.layer_norm_rms_epsilon"] == pytest.approx(1e-5)
    assert md["tokenizer.ggml.add_bos_token"] is False
    assert md["general.languages"] == ["en"]
    tokens, merges = md["tokenizer.ggml.tokens"], md["tokenizer.ggml.merges"]
    assert len(tokens) == 49152 and all(isinstance(t, str) for t in tokens)
    assert len(merges) == 48900 and all(isinstance(m, str) for m in merges)
    assert tokens[:3] == ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    assert md["tokenizer.ggml.token_type"][:2] == [3, 3]
    assert "<|im_start|>" in md["tokenizer.chat_template"]
    assert not any(k.startswith("GGUF.") for k in md)


def test_tensors(smollm2: GGUFFile) -> None:
    assert len(smollm2.tensors) == 272
    types = Counter(info.ggml_type for info in smollm2.tensors.values())
    assert types == {T.Q4_1: 210, T.F32: 61, T.Q8_0: 1}
    shapes = {
        "token_embd.weight": (49152, 576),
        "output_norm.weight": (576,),
        "blk.0.attn_q.weight": (576, 576),
        "blk.0.attn_k.weight": (192, 576),
        "blk.0.ffn_down.weight": (576, 1536),
        "blk.29.ffn_gate.weight": (1536, 576),
    }
    for name, shape in shapes.items():
        assert smollm2.tensors[name].shape == shape, name
    embed = smollm2.tensors["token_embd.weight"]
    assert embed.offset == smollm2.data_offset and embed.nbytes == 49152 * 576 // 32 * 34


def test_matches_gguf_py_reader(smollm2: GGUFFile) -> None:
    reader = gguf.GGUFReader(smollm2.path)
    assert reader.alignment == smollm2.alignment and reader.data_offset == smollm2.data_offset
    fields = {k: f.contents() for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    assert fields == smollm2.metadata
    assert [t.name for t in reader.tensors] == list(smollm2.tensors)
    for t in reader.tensors:
        info = smollm2.tensors[t.name]
        assert info.shape == tuple(int(d) for d in reversed(t.shape))
        assert (info.ggml_type, info.offset, info.nbytes) == (
            t.tensor_type,
            t.data_offset,
            t.n_bytes,
        )


def test_raw_is_a_read_only_view(smollm2: GGUFFile) -> None:
    info = smollm2.tensors["blk.0.attn_q.weight"]
    raw = smollm2.raw(info.name)
    assert raw.dtype == np.uint8 and raw.shape == (info.nbytes,)
    assert not raw.flags.writeable and not raw.flags.owndata
    with open(smollm2.path, "rb") as f:
        f.seek(info.offset)
        assert raw[:64].tobytes() == f.read(64)


def test_load_returns_independent_tensors(smollm2: GGUFFile) -> None:
    first = smollm2.load("output_norm.weight")
    expected = first.clone()
    first.zero_()  # must not write through to the read-only map
    assert torch.equal(smollm2.load("output_norm.weight"), expected)
    assert smollm2.load("output_norm.weight", dtype=torch.bfloat16).dtype == torch.bfloat16
    with pytest.raises(KeyError, match="no tensor named"):
        smollm2.load("nope.weight")


def test_close(smollm2_path: str) -> None:
    with GGUFFile(smollm2_path) as g:
        raw = g.raw("output_norm.weight")
    expected = raw.copy()
    assert np.array_equal(raw, expected)  # arrays keep the map alive after close()
    with pytest.raises(GGUFError, match="closed"):
        g.load("output_norm.weight")
    g.close()  # idempotent
