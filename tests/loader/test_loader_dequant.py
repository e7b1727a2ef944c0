"""Dequantization parity with gguf-py's numpy reference (``gguf.quants.dequantize``)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from gguf import GGML_QUANT_SIZES, GGMLQuantizationType, quants

from heron.loader.dequant import SUPPORTED_TYPES, UnsupportedGGMLTypeError, dequantize
from heron.loader.gguf import GGUFFile

T = GGMLQuantizationType

# Byte offsets of the fp16 scale fields inside one block: random bytes there would often be
# inf/NaN, which the reference and Heron propagate differently, so tests write finite values.
F16_FIELDS: dict[GGMLQuantizationType, tuple[int, ...]] = {
    T.F32: (),
    T.F16: (),
    T.BF16: (),
    T.Q8_0: (0,),
    T.Q4_0: (0,),
    T.Q4_1: (0, 2),
    T.Q5_0: (0,),
    T.Q5_1: (0, 2),
    T.Q2_K: (80, 82),
    T.Q3_K: (108,),
    T.Q4_K: (0, 2),
    T.Q5_K: (0, 2),
    T.Q6_K: (208,),
}


def test_every_supported_type_is_covered() -> None:
    assert set(F16_FIELDS) == set(SUPPORTED_TYPES)
    for required in (T.F32, T.F16, T.BF16, T.Q8_0, T.Q4_0, T.Q4_1, T.Q4_K, T.Q5_K, T.Q6_K):
        assert required in SUPPORTED_TYPES


def random_blocks(qtype: GGMLQuantizationType, n_blocks: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    _, type_size = GGML_QUANT_SIZES[qtype]
    raw = rng.integers(0, 256, size=(n_blocks, type_size), dtype=np.uint8)
    for off in F16_FIELDS[qtype]:
        scales = (rng.standard_normal(n_blocks) * 0.1).astype(np.float16)
        raw[:, off : off + 2] = scales.view(np.uint8).reshape(n_blocks, 2)
    return raw.reshape(-1)


def reference(raw: np.ndarray, qtype: GGMLQuantizationType, shape: tuple[int, ...]) -> torch.Tensor:
    out = quants.dequantize(raw, qtype).astype(np.float32).reshape(shape)
    return torch.from_numpy(np.ascontiguousarray(out))


@pytest.mark.parametrize("qtype", sorted(SUPPORTED_TYPES), ids=lambda t: t.name)
@pytest.mark.parametrize("seed", [0, 1])
def test_random_blocks_match_reference(qtype: GGMLQuantizationType, seed: int) -> None:
    block_size, _ = GGML_QUANT_SIZES[qtype]
    n_blocks = 96
    shape = (3, 4, n_blocks * block_size // 12)  # 3-D: blocks run along the last dim
    raw = random_blocks(qtype, n_blocks, seed)
    out = dequantize(torch.from_numpy(raw.copy()), qtype, shape)
    assert out.dtype == torch.float32 and out.shape == shape and out.is_contiguous()
    # Bit-exact: Heron follows the reference's float32 operation order. NaN appears only for
    # the raw float types, where random bit patterns include NaN encodings.
    torch.testing.assert_close(out, reference(raw, qtype, shape), rtol=0, atol=0, equal_nan=True)


@pytest.mark.parametrize("qtype", [T.F32, T.F16, T.Q8_0, T.Q4_K])
def test_output_never_aliases_input(qtype: GGMLQuantizationType) -> None:
    block_size, _ = GGML_QUANT_SIZES[qtype]
    raw = torch.from_numpy(random_blocks(qtype, 4, 7))
    before = raw.clone()
    out = dequantize(raw, qtype, (4 * block_size,))
    out.fill_(123.0)
    assert torch.equal(raw, before)


def test_unaligned_float_input_is_handled() -> None:
    values = torch.arange(8, dtype=torch.float32)
    padded = torch.cat([torch.zeros(1, dtype=torch.uint8), values.view(torch.uint8)])
    assert torch.equal(dequantize(padded[1:], T.F32, (8,)), values)


def test_unsupported_type_is_a_clear_error() -> None:
    with pytest.raises(UnsupportedGGMLTypeError, match="IQ2_XXS"):
        dequantize(torch.zeros(66, dtype=torch.uint8), T.IQ2_XXS, (256,))
    with pytest.raises(UnsupportedGGMLTypeError, match="unknown GGML type id 4"):
        dequantize(torch.zeros(18, dtype=torch.uint8), 4, (32,))


def test_size_mismatches_are_rejected() -> None:
    with pytest.raises(ValueError, match="needs 68 bytes"):
        dequantize(torch.zeros(34, dtype=torch.uint8), T.Q8_0, (64,))
    with pytest.raises(ValueError, match="block size 32"):
        dequantize(torch.zeros(34, dtype=torch.uint8), T.Q8_0, (2, 16))
    with pytest.raises(ValueError, match="flat uint8"):
        dequantize(torch.zeros(34, dtype=torch.int8), T.Q8_0, (32,))


def test_real_smollm2_tensors_match_reference(smollm2: GGUFFile) -> None:
    names = ["token_embd.weight", "output_norm.weight"]
    names += [n for n in smollm2.tensors if n.startswith("blk.0.") or n.startswith("blk.29.")]
    seen = set()
    for name in names:
        info = smollm2.tensors[name]
        seen.add(info.ggml_type)
        ours = smollm2.load(name)
        ref = reference(np.array(smollm2.raw(name)), info.ggml_type, info.shape)
        assert torch.equal(ours, ref), name
    assert seen == {T.Q8_0, T.Q4_1, T.F32}
