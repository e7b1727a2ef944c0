"""The paged backends (torch, and the CPU kernels' backend with its per-token path and its
torch fallback for long steps) against dense causal attention computed per sequence, with
and without a sliding window and logit soft-capping."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from heron.attention import AttentionBatch, get_attention_backend
from heron.attention import cpu as cpu_backend
from heron.kernels import cpu_kernels

HEADS, KV_HEADS, DIM, BS, NUM_BLOCKS = 6, 2, 8, 4, 32


def dense(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    start: int,
    window: int | None,
    softcap: float | None = None,
) -> torch.Tensor:
    # q [n, H, D] at positions start..start+n-1; k, v [start+n, KVH, D]
    n, total = q.shape[0], k.shape[0]
    rep = HEADS // KV_HEADS
    kk = k.repeat_interleave(rep, dim=1).transpose(0, 1)
    vv = v.repeat_interleave(rep, dim=1).transpose(0, 1)
    qpos = torch.arange(start, start + n).unsqueeze(1)
    kpos = torch.arange(total).unsqueeze(0)
    mask = kpos <= qpos
    if window is not None:
        mask &= kpos > qpos - window
    if softcap is None:
        o = F.scaled_dot_product_attention(q.transpose(0, 1), kk, vv, attn_mask=mask, scale=0.3)
        return o.transpose(0, 1)
    scores = q.transpose(0, 1) @ kk.transpose(1, 2) * 0.3  # [H, n, total]
    scores = softcap * torch.tanh(scores / softcap)
    probs = scores.masked_fill(~mask, float("-inf")).softmax(dim=-1)
    return (probs @ vv).transpose(0, 1)


@pytest.mark.parametrize("backend_name", ["torch", "cpu", "cpu-long-step"])
@pytest.mark.parametrize("softcap", [None, 1.5])
@pytest.mark.parametrize("window", [None, 5])
def test_mixed_decode_and_prefill_groups(
    window: int | None, softcap: float | None, backend_name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    torch.manual_seed(0)
    if backend_name != "torch" and cpu_kernels() is None:
        pytest.skip("Heron's CPU kernels could not be built here")
    if backend_name == "cpu-long-step":
        monkeypatch.setattr(cpu_backend, "FLAT_MAX_TOKENS", 4)  # this step's 15 tokens: torch
    backend = get_attention_backend(backend_name.removesuffix("-long-step"))
    cache = torch.zeros(2, NUM_BLOCKS, BS, KV_HEADS, DIM)
    # (tokens already cached, new tokens); decodes (1 new token) come first in flat order
    seqs = [(9, 1), (3, 1), (0, 7), (5, 6)]
    free = list(range(NUM_BLOCKS))
    torch.manual_seed(1)
    free = [free[i] for i in torch.randperm(NUM_BLOCKS).tolist()]  # scattered block ids
    full_k, full_v, tables = [], [], []
    for cached, new in seqs:
        total = cached + new
        table = [free.pop() for _ in range(-(-total // BS))]
        tables.append(table)
        k = torch.randn(total, KV_HEADS, DIM)
        v = torch.randn(total, KV_HEADS, DIM)
        full_k.append(k)
        full_v.append(v)
        for p in range(cached):  # pre-fill the cache with the already computed tokens
            cache[0, table[p // BS], p % BS] = k[p]
            cache[1, table[p // BS], p % BS] = v[p]
    qs = [torch.randn(new, HEADS, DIM) for _, new in seqs]
    slots = []
    for (cached, new), table in zip(seqs, tables, strict=True):
        slots += [table[p // BS] * BS + p % BS for p in range(cached, cached + new)]
    batch = AttentionBatch(
        query_lens=[n for _, n in seqs],
        context_lens=[c + n for c, n in seqs],
        block_tables=tables,
        num_decodes=2,
        slot_mapping=torch.tensor(slots),
        block_size=BS,
    )
    meta = backend.prepare_metadata(batch)
    if backend_name != "torch":
        assert (getattr(meta, "flat", None) is None) == (backend_name == "cpu-long-step")
    q = torch.cat(qs)
    k_new = torch.cat([k[c:] for k, (c, _) in zip(full_k, seqs, strict=True)])
    v_new = torch.cat([v[c:] for v, (c, _) in zip(full_v, seqs, strict=True)])
    out = backend.forward(q, k_new, v_new, cache, meta, 0.3, window, softcap=softcap)
    expected = torch.cat(
        [
            dense(qq, k, v, c, window, softcap)
            for qq, k, v, (c, _) in zip(qs, full_k, full_v, seqs, strict=True)
        ]
    )
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    # the new K/V landed in the cache at their slots
    flat_k = cache[0].view(-1, KV_HEADS, DIM)
    torch.testing.assert_close(flat_k[torch.tensor(slots)], k_new)


def test_unknown_backend() -> None:
    with pytest.raises(ValueError, match="unknown attention backend"):
        get_attention_backend("nope")


def test_softcap_changes_attention() -> None:
    """The soft-capped path is taken: large scores are squashed, so the output differs."""
    backend = get_attention_backend("torch")
    torch.manual_seed(2)
    cache = torch.zeros(2, NUM_BLOCKS, BS, KV_HEADS, DIM)
    n = 6
    batch = AttentionBatch([n], [n], [[0, 1]], 0, torch.arange(n), BS)
    q, k, v = (
        3 * torch.randn(n, HEADS, DIM),
        3 * torch.randn(n, KV_HEADS, DIM),
        torch.randn(n, KV_HEADS, DIM),
    )
    plain = backend.forward(q, k, v, cache, backend.prepare_metadata(batch), 0.3)
    capped = backend.forward(q, k, v, cache, backend.prepare_metadata(batch), 0.3, softcap=1.0)
    assert (plain - capped).abs().max() > 1e-2
