"""Quantized linears: exact round trips of GGUF blocks, accuracy against fp32 on the same
weights, and results that do not depend on the batch."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch

from heron.kernels.quant import choose_kind, dequantize_q4_1, dequantize_q8_0
from heron.layers.linear import Linear

SHAPES = [(64, 32), (40, 96), (96, 576), (48, 1536), (33, 160)]  # tails of 1..3 blocks


def _weights(n: int, k: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, k, generator=g) * 0.05


@pytest.mark.parametrize(("n", "k"), SHAPES)
def test_requantizing_dequantized_blocks_is_exact(kernels: ModuleType, n: int, k: int) -> None:
    w = _weights(n, k)
    q4 = kernels.quantize_q4_1(w)
    again = kernels.quantize_q4_1(dequantize_q4_1(*q4).contiguous())
    assert all(torch.equal(a, b) for a, b in zip(q4, again, strict=True))
    q8 = kernels.quantize_q8_0(w)
    again8 = kernels.quantize_q8_0(dequantize_q8_0(*q8).contiguous())
    assert all(torch.equal(a, b) for a, b in zip(q8, again8, strict=True))


@pytest.mark.parametrize(("n", "k"), SHAPES)
@pytest.mark.parametrize("kind", ["q4_1", "q8_0"])
def test_linear_matches_fp32_on_its_own_weights(
    kernels: ModuleType, n: int, k: int, kind: str
) -> None:
    w = _weights(n, k, seed=1)
    bias = torch.randn(n)
    layer = Linear(k, n, bias=True)
    layer.weight.data.copy_(w)
    layer.bias.data.copy_(bias)  # type: ignore[union-attr]
    layer.quantize(kind, kernels)
    x = torch.randn(7, k, generator=torch.Generator().manual_seed(2))
    ref = x @ layer.dequantized_weight().T + bias
    out = layer(x)
    # Only the int8 rounding of the activations differs (per block of 32, amax / 127).
    err = (out - ref).abs().max() / ref.abs().max()
    assert err < 2e-2, err
    assert out.shape == (7, n)


@pytest.mark.parametrize("kind", ["q4_1", "q8_0"])
@pytest.mark.parametrize("rows", [2, 3, 6, 7, 21])  # tiles of 8, 4, then 3, 2 or 1 rows
def test_results_do_not_depend_on_the_batch(kernels: ModuleType, kind: str, rows: int) -> None:
    w = _weights(200, 576, seed=3)
    layer = Linear(576, 200)
    layer.weight.data.copy_(w)
    layer.quantize(kind, kernels)
    x = torch.randn(rows, 576, generator=torch.Generator().manual_seed(4))
    full = layer(x)
    alone = torch.cat([layer(x[i : i + 1]) for i in range(rows)])
    assert torch.equal(full, alone)  # bit for bit, for every tile size
    torch.set_num_threads(1)
    try:
        assert torch.equal(layer(x), full)  # and with any thread count
    finally:
        torch.set_num_threads(2)


def test_choose_kind_keeps_4_bits_only_where_lossless(kernels: ModuleType) -> None:
    w = _weights(64, 64, seed=5)
    assert choose_kind(w, kernels) == "q8_0"
    exact = dequantize_q4_1(*kernels.quantize_q4_1(w))
    assert choose_kind(exact, kernels) == "q4_1"


def test_bad_shapes_are_refused(kernels: ModuleType) -> None:
    qs, d, m = kernels.quantize_q4_1(_weights(8, 64))
    with pytest.raises(RuntimeError, match="features"):
        kernels.linear_q4_1(torch.randn(2, 32), qs, d, m, None)
    with pytest.raises(RuntimeError, match="contiguous float32"):
        kernels.linear_q4_1(torch.randn(2, 64).double(), qs, d, m, None)
    with pytest.raises(RuntimeError, match="multiple of 32"):
        kernels.quantize_q8_0(torch.randn(4, 40))
    layer = Linear(40, 8)
    with pytest.raises(ValueError, match="divisible by 32"):
        layer.quantize("q8_0", kernels)


@pytest.mark.parametrize("rows", [1, 3, 24, 200])  # 200 x 576 runs on both threads
def test_activation_blocks_match_their_definition(kernels: ModuleType, rows: int) -> None:
    # xq = round-half-even(x * (1 / dx)), dx = amax / 127, per row and block of 32, exactly.
    g = torch.Generator().manual_seed(rows)
    x = torch.randn(rows, 576, generator=g) * torch.logspace(-3, 2, rows).unsqueeze(1)
    x[0, :32] = 0.0  # an all-zero block: dx = 0 and xq = 0
    q, dx, s, total = kernels.quantize_rows(x)
    blocks = x.view(rows, -1, 32)
    amax = blocks.abs().amax(-1)
    d = amax / 127.0
    inv = torch.where(d != 0, 1.0 / d, torch.zeros_like(d))
    ref = torch.round(blocks * inv.unsqueeze(-1))
    assert torch.equal(dx, d)
    assert torch.equal(q.view(rows, -1, 32).float(), ref)
    assert torch.equal(total, ref.sum(-1).int())
    assert torch.equal(s, d * ref.sum(-1))
    assert q.abs().max() <= 127
