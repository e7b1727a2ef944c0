"""The fused CPU ops against the torch code they replace."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch

from heron.layers.norm import RMSNorm
from heron.layers.rotary import apply_rotary


def test_rms_norm_and_fused_residual(kernels: ModuleType) -> None:
    x, res = torch.randn(5, 96), torch.randn(5, 96)
    norm = RMSNorm(96, 1e-6)
    norm.weight.data.normal_()
    ref = norm(x)
    assert torch.allclose(kernels.rms_norm(x, norm.weight, 1e-6), ref, atol=1e-5)
    expected_res = res + x
    out = kernels.add_rms_norm_(x, res, norm.weight, 1e-6)
    assert torch.allclose(res, expected_res)  # residual updated in place
    assert torch.allclose(out, norm(expected_res), atol=1e-5)


@pytest.mark.parametrize("half", [32, 16])  # full and partial rotary over head_dim 64
def test_rope_in_place_on_strided_views(kernels: ModuleType, half: int) -> None:
    qkv = torch.randn(6, 9 * 64 + 2 * 3 * 64)
    q = qkv[:, : 9 * 64].view(6, 9, 64)
    k = qkv[:, 9 * 64 : 12 * 64].view(6, 3, 64)
    angles = torch.randn(6, half)
    cos, sin = angles.cos(), angles.sin()
    ref_q = apply_rotary(q.clone(), cos.unsqueeze(1), sin.unsqueeze(1))
    ref_k = apply_rotary(k.clone(), cos.unsqueeze(1), sin.unsqueeze(1))
    v_before = qkv[:, 12 * 64 :].clone()
    kernels.rope_(q, cos, sin)
    kernels.rope_(k, cos, sin)
    assert torch.allclose(q, ref_q, atol=1e-6) and torch.allclose(k, ref_k, atol=1e-6)
    assert torch.equal(qkv[:, 12 * 64 :], v_before)


def test_cache_write_and_bounds(kernels: ModuleType) -> None:
    k_cache, v_cache = torch.zeros(4, 8, 2, 16), torch.zeros(4, 8, 2, 16)
    k, v = torch.randn(3, 2, 16), torch.randn(3, 2, 16)
    slots = torch.tensor([5, 17, 31])
    kernels.cache_write_(k, v, k_cache, v_cache, slots)
    assert torch.equal(k_cache.view(-1, 2, 16)[slots], k)
    assert torch.equal(v_cache.view(-1, 2, 16)[slots], v)
    with pytest.raises(RuntimeError, match="slot out of range"):
        kernels.cache_write_(k, v, k_cache, v_cache, torch.tensor([0, 1, 32]))


def _reference_attention(
    q: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    scale: float,
    window: int,
    softcap: float,
) -> torch.Tensor:
    # q [heads, D]; keys, values [L, kv_heads, D]: the query sits at position L - 1.
    heads, kv_heads = q.shape[0], keys.shape[1]
    k = keys.repeat_interleave(heads // kv_heads, dim=1).transpose(0, 1)  # [heads, L, D]
    v = values.repeat_interleave(heads // kv_heads, dim=1).transpose(0, 1)
    s = torch.einsum("hd,hld->hl", q, k) * scale
    if softcap:
        s = torch.tanh(s / softcap) * softcap
    if window:
        s[:, : max(0, keys.shape[0] - window)] = float("-inf")
    return torch.einsum("hl,hld->hd", s.softmax(-1), v)


@pytest.mark.parametrize("heads", [6, 8])  # 3 or 4 query heads per KV head
@pytest.mark.parametrize(("window", "softcap"), [(0, 0.0), (5, 0.0), (0, 20.0)])
@pytest.mark.parametrize("dim", [16, 64, 128, 40])  # 64 and 128 sum values in registers
def test_paged_attention_against_dense(
    kernels: ModuleType, window: int, softcap: float, dim: int, heads: int
) -> None:
    g = torch.Generator().manual_seed(0)
    bs, kv_heads = 4, 2
    k_cache = torch.randn(12, bs, kv_heads, dim, generator=g)
    v_cache = torch.randn(12, bs, kv_heads, dim, generator=g)
    tables = [[7, 2, 9], [4], [11, 0, 3, 8]]
    lens = [10, 3, 16]
    table = torch.zeros(3, 4, dtype=torch.long)
    for i, t in enumerate(tables):
        table[i, : len(t)] = torch.tensor(t)
    q = torch.randn(3, heads, dim, generator=g)
    out = kernels.paged_decode_attention(
        q, k_cache, v_cache, table, torch.tensor(lens), 0.25, window, softcap
    )
    for i, (t, n) in enumerate(zip(tables, lens, strict=True)):
        keys = k_cache[t].reshape(-1, kv_heads, dim)[:n]
        values = v_cache[t].reshape(-1, kv_heads, dim)[:n]
        ref = _reference_attention(q[i], keys, values, 0.25, window, softcap)
        assert torch.allclose(out[i], ref, atol=1e-5), i
    with pytest.raises(RuntimeError, match="context length"):
        kernels.paged_decode_attention(
            q, k_cache, v_cache, table, torch.tensor([10, 3, 17]), 1.0, 0, 0.0
        )


@pytest.mark.parametrize("dim", [16, 64])
def test_float16_cache_matches_float32(kernels: ModuleType, dim: int) -> None:
    g = torch.Generator().manual_seed(3)
    k, v = torch.randn(20, 2, dim, generator=g), torch.randn(20, 2, dim, generator=g)
    caches = {
        dt: (torch.zeros(5, 4, 2, dim, dtype=dt), torch.zeros(5, 4, 2, dim, dtype=dt))
        for dt in (torch.float32, torch.float16)
    }
    slots = torch.tensor([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 0])
    for kc, vc in caches.values():
        kernels.cache_write_(k, v, kc, vc, slots)
    kh = caches[torch.float16][0]
    assert torch.equal(kh.view(-1, 2, dim)[slots], k.half())  # rounded once, when written
    q = torch.randn(3, 6, dim, generator=g)
    table = torch.tensor([[0, 1, 2, 3, 4]] * 3)
    lens = torch.tensor([20, 7, 13])
    out = {
        dt: kernels.paged_decode_attention(q, kc, vc, table, lens, 0.25, 0, 0.0)
        for dt, (kc, vc) in caches.items()
    }
    assert torch.allclose(out[torch.float16], out[torch.float32], atol=2e-3)
    with pytest.raises(RuntimeError, match="float32 or float16"):
        kernels.cache_write_(k, v, caches[torch.float32][0], caches[torch.float16][1], slots)


def _alone(
    kernels: ModuleType,
    i: int,
    q: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    table: torch.Tensor,
    lens: torch.Tensor,
    window: int,
    softcap: float,
) -> torch.Tensor:
    """Query row i of a batch run on its own: [heads, D]."""
    rows = slice(i, i + 1)
    out: torch.Tensor = kernels.paged_decode_attention(
        q[rows].contiguous(),
        k_cache,
        v_cache,
        table[rows].contiguous(),
        lens[rows].contiguous(),
        0.25,
        window,
        softcap,
    )
    return out[0]


@pytest.mark.parametrize(("window", "softcap"), [(0, 0.0), (3, 20.0)])
@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("group", [1, 2, 3, 4, 5])  # heads per KV head: rows of 3, 2 and 1
@pytest.mark.parametrize("dim", [16, 64])
def test_attention_is_the_same_alone_and_in_a_batch(
    kernels: ModuleType,
    dim: int,
    group: int,
    cache_dtype: torch.dtype,
    window: int,
    softcap: float,
) -> None:
    # Few queries split the work per head, many per KV head (the heads sharing one then run
    # together, up to three at a time): the numbers must not change.
    g = torch.Generator().manual_seed(4)
    k_cache = torch.randn(30, 4, 2, dim, generator=g).to(cache_dtype)
    v_cache = torch.randn(30, 4, 2, dim, generator=g).to(cache_dtype)
    q = torch.randn(24, 2 * group, dim, generator=g)
    table = torch.randint(0, 30, (24, 6), generator=g)
    lens = torch.randint(1, 25, (24,), generator=g)
    batch = kernels.paged_decode_attention(q, k_cache, v_cache, table, lens, 0.25, window, softcap)
    for i in range(24):
        alone = _alone(kernels, i, q, k_cache, v_cache, table, lens, window, softcap)
        assert torch.equal(alone, batch[i])


@pytest.mark.parametrize("softcap", [0.0, 20.0])
@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("dim", [16, 64])
@pytest.mark.parametrize("group", [1, 3])
def test_a_verify_steps_queries_equal_each_alone_and_the_reference(
    kernels: ModuleType, dim: int, cache_dtype: torch.dtype, softcap: float, group: int
) -> None:
    # A verify step: rows with one block table and contexts one apart (runs of 9 and 2 here,
    # with lone decode rows between them); every row must equal itself alone and the dense
    # reference.
    g = torch.Generator().manual_seed(5)
    bs, kv_heads = 4, 2
    k_cache = torch.randn(40, bs, kv_heads, dim, generator=g).to(cache_dtype)
    v_cache = torch.randn(40, bs, kv_heads, dim, generator=g).to(cache_dtype)
    blocks = [torch.randperm(40, generator=g)[:10] for _ in range(3)]
    rows = [(0, n) for n in range(21, 30)] + [(1, 6)] + [(2, 3), (2, 4)] + [(0, 5)]
    table = torch.stack([blocks[s] for s, _ in rows])
    lens = torch.tensor([n for _, n in rows])
    q = torch.randn(len(rows), kv_heads * group, dim, generator=g)
    batch = kernels.paged_decode_attention(q, k_cache, v_cache, table, lens, 0.25, 0, softcap)
    for i, (seq, n) in enumerate(rows):
        alone = _alone(kernels, i, q, k_cache, v_cache, table, lens, 0, softcap)
        assert torch.equal(alone, batch[i]), i
        keys = k_cache[blocks[seq]].float().reshape(-1, kv_heads, dim)[:n]
        values = v_cache[blocks[seq]].float().reshape(-1, kv_heads, dim)[:n]
        ref = _reference_attention(q[i], keys, values, 0.25, 0, softcap)
        assert torch.allclose(batch[i], ref, atol=1e-5), i


def test_silu_mul_matches_torch(kernels: ModuleType) -> None:
    gu = torch.randn(5, 2 * 84, generator=torch.Generator().manual_seed(7)) * 4  # 84: a tail of 4
    gate, up = gu.chunk(2, dim=-1)
    assert torch.allclose(kernels.silu_mul(gu), torch.nn.functional.silu(gate) * up, atol=1e-5)
    with pytest.raises(RuntimeError, match="contiguous float32"):
        kernels.silu_mul(gu[:, :-1])


def test_attention_takes_queries_with_strided_rows(kernels: ModuleType) -> None:
    # The fused layer passes q as a view into the q/k/v projection's output.
    g = torch.Generator().manual_seed(8)
    k_cache, v_cache = torch.randn(6, 4, 2, 64, generator=g), torch.randn(6, 4, 2, 64, generator=g)
    qkv = torch.randn(3, 6 * 64 + 100, generator=g)
    q = qkv[:, : 6 * 64].view(3, 6, 64)
    table = torch.tensor([[0, 1, 2], [3, 4, 5], [1, 3, 5]])
    lens = torch.tensor([9, 12, 5])
    strided = kernels.paged_decode_attention(q, k_cache, v_cache, table, lens, 0.125, 0, 0.0)
    dense = kernels.paged_decode_attention(
        q.contiguous(), k_cache, v_cache, table, lens, 0.125, 0, 0.0
    )
    assert torch.equal(strided, dense)
