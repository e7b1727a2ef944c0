"""The 8-row packed layouts (AVX2 and AVX-512 VNNI): exact repacking of GGUF blocks, the same
results as the plain layout's kernels, and no dependence on the batch."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch

from heron.kernels.quant import (
    dequantize_q4_1,
    dequantize_q4_1_x8,
    dequantize_q8_0,
    dequantize_q8_0_x8,
)
from heron.layers.linear import Linear

SHAPES = [(8, 32), (40, 96), (96, 576), (48, 1536), (16, 160)]


@pytest.fixture
def packed(kernels: ModuleType) -> ModuleType:
    if not kernels.has_packed():
        pytest.skip("no AVX2 at this level: the packed linears are not built")
    return kernels


def _weights(n: int, k: int, seed: int = 0) -> torch.Tensor:
    return torch.randn(n, k, generator=torch.Generator().manual_seed(seed)) * 0.05


def _x(m: int, k: int, seed: int = 1) -> torch.Tensor:
    return torch.randn(m, k, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(("n", "k"), SHAPES)
def test_packing_keeps_every_weight(packed: ModuleType, n: int, k: int) -> None:
    q4 = packed.quantize_q4_1(_weights(n, k))
    assert torch.equal(dequantize_q4_1_x8(*packed.pack_q4_1(*q4)), dequantize_q4_1(*q4))
    q8 = packed.quantize_q8_0(_weights(n, k))
    assert torch.equal(dequantize_q8_0_x8(*packed.pack_q8_0(*q8)), dequantize_q8_0(*q8))


def test_packed_layout_is_the_documented_one(packed: ModuleType) -> None:
    # Row c, element e of block 0 holds the value c * 32 + e (mod 16 for 4 bits).
    qs = torch.zeros(8, 16, dtype=torch.uint8)
    for c in range(8):
        for j in range(16):
            qs[c, j] = (c + j) % 16 | ((c + j + 16) % 16) << 4
    d = torch.ones(8, 1, dtype=torch.float16)
    pq, _, _ = packed.pack_q4_1(qs, d, torch.zeros(8, 1, dtype=torch.float16))
    for h in range(4):
        for c in range(8):
            for t in range(4):
                byte = int(pq[0, 0, h * 32 + c * 4 + t])
                assert byte & 15 == (c + 8 * h + t) % 16
                assert byte >> 4 == (c + 8 * h + 4 + t) % 16
    q8 = torch.arange(256, dtype=torch.int16).sub(128).to(torch.int8).view(8, 32)
    pq8, _ = packed.pack_q8_0(q8.contiguous(), d)
    for q in range(8):
        for c in range(8):
            for t in range(4):
                assert int(pq8[0, 0, q * 32 + c * 4 + t]) == int(q8[c, 4 * q + t]) + 128


@pytest.mark.parametrize(("n", "k"), SHAPES)
@pytest.mark.parametrize("m", [1, 5, 8, 13])
def test_packed_linears_equal_the_plain_ones(packed: ModuleType, n: int, k: int, m: int) -> None:
    x = _x(m, k)
    q4 = packed.quantize_q4_1(_weights(n, k))
    plain = packed.linear_q4_1(x, *q4, None)
    out = packed.linear_q4_1(x, *packed.pack_q4_1(*q4), None)
    # The same integer block sums; only the order of the float additions differs.
    assert torch.allclose(out, plain, rtol=1e-5, atol=1e-5 * plain.abs().max().item())
    q8 = packed.quantize_q8_0(_weights(n, k))
    plain = packed.linear_q8_0(x, *q8, None)
    out = packed.linear_q8_0(x, *packed.pack_q8_0(*q8), None)
    assert torch.allclose(out, plain, rtol=1e-5, atol=1e-5 * plain.abs().max().item())


def test_extreme_values_do_not_overflow(packed: ModuleType) -> None:
    # Every weight at -128 or 127 (the +128 offset spans 0..255) against x at full scale.
    qs = torch.full((8, 64), 127, dtype=torch.int8)
    qs[:, ::2] = -128
    d = torch.ones(8, 2, dtype=torch.float16)
    x = torch.full((3, 64), 1.0)
    x[1] = -1.0
    out = packed.linear_q8_0(x, *packed.pack_q8_0(qs, d), None)
    assert torch.allclose(out, x @ dequantize_q8_0(qs, d).T)


@pytest.mark.parametrize("m", [1, 3, 4, 7])
def test_extreme_q4_values_do_not_overflow(packed: ModuleType, m: int) -> None:
    # Every weight at 15 against x at +-full scale: AVX2 adds a block's 16-bit pair sums (up
    # to 30480 each) before widening them, which must stay exact.
    qs = torch.full((16, 64), 0xFF, dtype=torch.uint8)
    d = torch.ones(16, 4, dtype=torch.float16)
    mins = torch.zeros(16, 4, dtype=torch.float16)
    x = torch.full((m, 128), 1.0)
    x[::2] = -1.0
    out = packed.linear_q4_1(x, *packed.pack_q4_1(qs, d, mins), None)
    assert torch.equal(out, x @ dequantize_q4_1(qs, d, mins).T)


def test_linear_layers_use_the_packed_layout(packed: ModuleType) -> None:
    layer = Linear(64, 24)
    layer.weight.data.copy_(_weights(24, 64))
    layer.quantize("q4_1", packed)
    assert layer.qweight[0].shape == (3, 2, 128)
    odd = Linear(64, 20)
    odd.weight.data.copy_(_weights(20, 64))
    odd.quantize("q8_0", packed)
    assert odd.qweight[0].shape == (20, 64)  # not a multiple of 8 rows: the plain layout


@pytest.mark.parametrize("kind", ["q4_1", "q8_0"])
def test_packed_results_do_not_depend_on_the_batch(packed: ModuleType, kind: str) -> None:
    layer = Linear(576, 96)
    layer.weight.data.copy_(_weights(96, 576, seed=3))
    layer.quantize(kind, packed)
    x = _x(29, 576, seed=4)
    full = layer(x)
    assert torch.equal(full, torch.cat([layer(x[i : i + 1]) for i in range(29)]))
    assert torch.equal(full[3:16], layer(x[3:16]))


def test_bad_packed_inputs_are_refused(packed: ModuleType) -> None:
    q4 = packed.quantize_q4_1(_weights(8, 64))
    pq, pd, pm = packed.pack_q4_1(*q4)
    with pytest.raises(RuntimeError, match="features"):
        packed.linear_q4_1(_x(2, 32), pq, pd, pm, None)
    with pytest.raises(RuntimeError, match="packed scales"):
        packed.linear_q4_1(_x(2, 64), pq, pd[:, :1].contiguous(), pm, None)
    with pytest.raises(RuntimeError, match="divisible by 8"):
        packed.pack_q4_1(*packed.quantize_q4_1(_weights(12, 64)))
    with pytest.raises(RuntimeError, match="divisible by 8"):
        packed.pack_q8_0(*packed.quantize_q8_0(_weights(12, 64)))
    q8 = packed.pack_q8_0(*packed.quantize_q8_0(_weights(8, 64)))
    with pytest.raises(RuntimeError, match="uint8"):
        packed.linear_q8_0(_x(2, 64), q8[0].view(torch.int8), q8[1], None)
