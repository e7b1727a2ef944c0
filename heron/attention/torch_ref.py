"""Reference paged attention in plain torch: gather blocks with ``index_select``, then SDPA
(or, for logit soft-capping, which SDPA cannot do, explicit matmul-tanh-softmax).

Sequences are handled as two padded groups, decodes and prefill chunks, so the number of
kernel calls per layer is constant however many sequences run: no per-sequence Python loop.
Block gathering uses ``index_select`` on whole blocks, several times cheaper here than advanced
indexing.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from heron.attention.base import AttentionBackend, AttentionBatch


@dataclass(slots=True)
class _Group:
    block_table: torch.Tensor  # [num_seqs, max_blocks] int64, padded with block 0
    query_pos: torch.Tensor  # [num_seqs, max_query] absolute position of each query
    key_limit: torch.Tensor  # [num_seqs, 1] tokens valid in the cache
    num_seqs: int
    max_query: int
    q_index: torch.Tensor | None  # [group_tokens] flat -> padded row, prefill group only
    masks: dict[int | None, torch.Tensor] = field(default_factory=dict)

    def mask(self, sliding_window: int | None, block_size: int) -> torch.Tensor:
        """[num_seqs, 1, max_query, num_keys] bool, memoised per window size."""
        cached = self.masks.get(sliding_window)
        if cached is not None:
            return cached
        num_keys = self.block_table.shape[1] * block_size
        key_pos = torch.arange(num_keys).view(1, 1, num_keys)
        qpos = self.query_pos.unsqueeze(-1)  # [num_seqs, max_query, 1]
        mask = (key_pos <= qpos) & (key_pos < self.key_limit.unsqueeze(-1))
        if sliding_window is not None:
            mask &= key_pos > qpos - sliding_window
        # Padded query rows would see no key and give NaN; let them see key 0 (discarded).
        mask[..., 0] |= ~mask.any(dim=-1)
        mask = mask.unsqueeze(1)
        self.masks[sliding_window] = mask
        return mask


@dataclass(slots=True)
class TorchAttentionMetadata:
    slot_mapping: torch.Tensor
    block_size: int
    num_decode_tokens: int
    decode: _Group | None
    prefill: _Group | None


def _make_group(
    query_lens: list[int],
    context_lens: list[int],
    block_tables: list[list[int]],
    block_size: int,
    with_q_index: bool,
) -> _Group:
    num_seqs = len(query_lens)
    max_blocks = max(len(t) for t in block_tables)
    table = np.zeros((num_seqs, max_blocks), dtype=np.int64)
    for i, t in enumerate(block_tables):
        table[i, : len(t)] = t
    qlens = np.asarray(query_lens, dtype=np.int64)
    clens = np.asarray(context_lens, dtype=np.int64)
    max_query = int(qlens.max())
    offs = np.arange(max_query, dtype=np.int64)
    qpos = (clens - qlens)[:, None] + offs[None, :]
    q_index = None
    if with_q_index:
        valid = offs[None, :] < qlens[:, None]
        q_index = torch.from_numpy(np.nonzero(valid.reshape(-1))[0].astype(np.int64))
        qpos = np.where(valid, qpos, -1)
    return _Group(
        block_table=torch.from_numpy(table),
        query_pos=torch.from_numpy(qpos),
        key_limit=torch.from_numpy(clens[:, None]),
        num_seqs=num_seqs,
        max_query=max_query,
        q_index=q_index,
    )


def _softcap_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    mask: torch.Tensor,
    scale: float,
    softcap: float,
) -> torch.Tensor:
    """Attention with scores squashed to ``softcap * tanh(s / softcap)``, which SDPA cannot do.

    q [B, heads, Q, dim]; k, v [B, kv_heads, L, dim]; mask [B, 1, Q, L] bool (True: attend).
    Query head h reads KV head h // (heads // kv_heads). Returns [B, heads, Q, dim].
    """
    b, num_heads, nq, dim = q.shape
    num_kv_heads = k.shape[1]
    qg = q.view(b, num_kv_heads, num_heads // num_kv_heads, nq, dim)
    scores = torch.matmul(qg, k.unsqueeze(2).transpose(-1, -2)) * scale  # [B, kv, G, Q, L]
    scores = torch.tanh(scores / softcap) * softcap
    scores = scores.masked_fill(~mask.unsqueeze(1), float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    return torch.matmul(probs, v.unsqueeze(2)).view(b, num_heads, nq, dim)


class TorchAttentionBackend(AttentionBackend):
    def prepare_metadata(self, batch: AttentionBatch) -> TorchAttentionMetadata:
        nd = batch.num_decodes
        decode = prefill = None
        if nd:
            decode = _make_group(
                batch.query_lens[:nd],
                batch.context_lens[:nd],
                batch.block_tables[:nd],
                batch.block_size,
                with_q_index=False,
            )
        if len(batch.query_lens) > nd:
            prefill = _make_group(
                batch.query_lens[nd:],
                batch.context_lens[nd:],
                batch.block_tables[nd:],
                batch.block_size,
                with_q_index=True,
            )
        return TorchAttentionMetadata(batch.slot_mapping, batch.block_size, nd, decode, prefill)

    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: TorchAttentionMetadata,
        scale: float,
        sliding_window: int | None = None,
        softcap: float | None = None,
    ) -> torch.Tensor:
        self.write_cache(k, v, kv_cache, metadata.slot_mapping)
        nd = metadata.num_decode_tokens
        if metadata.prefill is None and metadata.decode is not None:
            return self.attend_decode(
                q, kv_cache, metadata.decode, metadata, scale, sliding_window, softcap
            )
        out = q.new_empty(q.shape)
        if metadata.decode is not None:
            out[:nd] = self.attend_decode(
                q[:nd], kv_cache, metadata.decode, metadata, scale, sliding_window, softcap
            )
        if metadata.prefill is not None:
            out[nd:] = self.attend_prefill(
                q[nd:], kv_cache, metadata.prefill, metadata, scale, sliding_window, softcap
            )
        return out

    def write_cache(
        self, k: torch.Tensor, v: torch.Tensor, kv_cache: torch.Tensor, slots: torch.Tensor
    ) -> None:
        """Store k, v [num_tokens, num_kv_heads, head_dim] at flat ``slots`` of the cache."""
        num_kv_heads, head_dim = k.shape[1], k.shape[2]
        k_cache, v_cache = kv_cache[0], kv_cache[1]
        k_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slots, k.to(k_cache.dtype))
        v_cache.view(-1, num_kv_heads, head_dim).index_copy_(0, slots, v.to(v_cache.dtype))

    def attend_decode(
        self,
        q: torch.Tensor,
        kv_cache: torch.Tensor,
        g: _Group,
        metadata: TorchAttentionMetadata,
        scale: float,
        sliding_window: int | None,
        softcap: float | None,
    ) -> torch.Tensor:
        """One query per sequence: q [num_seqs, num_heads, head_dim] -> same shape."""
        nd, num_heads, head_dim = q.shape
        num_kv_heads = kv_cache.shape[3]
        keys, values = self._gather(kv_cache[0], kv_cache[1], g, q.dtype)  # [B, kv, L, dim]
        # Fold the query heads sharing a KV head into the query-length axis:
        # [B, kv_heads, heads_per_kv, dim], so GQA needs no repeat of K/V.
        qd = q.reshape(g.num_seqs, num_kv_heads, num_heads // num_kv_heads, head_dim)
        mask = g.mask(sliding_window, metadata.block_size)
        if softcap is None:
            o = F.scaled_dot_product_attention(qd, keys, values, attn_mask=mask, scale=scale)
        else:
            o = _softcap_attention(qd, keys, values, mask, scale, softcap)
        return o.reshape(nd, num_heads, head_dim)

    def attend_prefill(
        self,
        q: torch.Tensor,
        kv_cache: torch.Tensor,
        g: _Group,
        metadata: TorchAttentionMetadata,
        scale: float,
        sliding_window: int | None,
        softcap: float | None,
    ) -> torch.Tensor:
        """Prefill chunks: q [chunk_tokens, num_heads, head_dim] -> same shape."""
        assert g.q_index is not None
        _, num_heads, head_dim = q.shape
        num_kv_heads = kv_cache.shape[3]
        keys, values = self._gather(kv_cache[0], kv_cache[1], g, q.dtype)
        padded = q.new_zeros(g.num_seqs * g.max_query, num_heads, head_dim)
        padded.index_copy_(0, g.q_index, q)
        qp = padded.view(g.num_seqs, g.max_query, num_heads, head_dim).transpose(1, 2)
        mask = g.mask(sliding_window, metadata.block_size)
        if softcap is None:
            o = F.scaled_dot_product_attention(
                qp,
                keys,
                values,
                attn_mask=mask,
                scale=scale,
                enable_gqa=num_heads != num_kv_heads,
            )  # [B, heads, max_query, dim]
        else:
            o = _softcap_attention(qp, keys, values, mask, scale, softcap)
        o = o.transpose(1, 2).reshape(g.num_seqs * g.max_query, num_heads, head_dim)
        return o.index_select(0, g.q_index)

    @staticmethod
    def _gather(
        k_cache: torch.Tensor, v_cache: torch.Tensor, g: _Group, dtype: torch.dtype
    ) -> tuple[torch.Tensor, torch.Tensor]:
        num_blocks, block_size, kv_heads, dim = k_cache.shape
        idx = g.block_table.reshape(-1)
        shape = (g.num_seqs, g.block_table.shape[1] * block_size, kv_heads, dim)
        keys = k_cache.index_select(0, idx).view(shape).transpose(1, 2)
        values = v_cache.index_select(0, idx).view(shape).transpose(1, 2)
        return keys.to(dtype), values.to(dtype)
