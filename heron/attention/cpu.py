"""Paged attention on Heron's CPU kernels (``heron/kernels/csrc/attention.cpp``).

Every query token attends over the blocks where they lie (no gather, no mask): a token at
position p of a sequence is a query over that sequence's first p + 1 cached tokens, whether it
decodes or belongs to a prefill chunk, since the step's keys and values are written first.
Steps of up to ``FLAT_MAX_TOKENS`` tokens run that way (and whole decoder layers may then run
as one kernel call each, see ``heron.kernels.fused``); longer prefill chunks use the torch
reference path, whose SDPA is faster for long causal blocks. The cache may be float32 or
float16 (half the bytes each step reads; values are rounded when written).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from heron.attention.base import AttentionBatch
from heron.attention.torch_ref import TorchAttentionBackend, TorchAttentionMetadata
from heron.kernels import CACHE_DTYPES, require_cpu_kernels

FLAT_MAX_TOKENS = 256


@dataclass(slots=True)
class FlatTokens:
    """Per query token: the block table row of its sequence and its context length."""

    block_table: torch.Tensor  # [num_tokens, max_blocks] int64, padded with block 0
    context_lens: torch.Tensor  # [num_tokens] int64: position + 1


@dataclass(slots=True)
class CpuAttentionMetadata(TorchAttentionMetadata):
    flat: FlatTokens | None = None
    batch: AttentionBatch | None = None  # kept to build the padded groups if needed


def flat_tokens(batch: AttentionBatch) -> FlatTokens:
    """Host work, once per step: one attention row per query token."""
    qlens = np.asarray(batch.query_lens, dtype=np.int64)
    clens = np.asarray(batch.context_lens, dtype=np.int64)
    max_blocks = max(len(t) for t in batch.block_tables)
    table = np.zeros((len(qlens), max_blocks), dtype=np.int64)
    for i, t in enumerate(batch.block_tables):
        table[i, : len(t)] = t
    rows = np.repeat(np.arange(len(qlens)), qlens)
    starts = np.repeat(clens - qlens - np.cumsum(qlens) + qlens, qlens)
    ctx = starts + np.arange(len(rows)) + 1  # position of each token + 1
    return FlatTokens(torch.from_numpy(table[rows]), torch.from_numpy(ctx))


class CpuAttentionBackend(TorchAttentionBackend):
    # Its metadata may carry ``flat``, so whole steps may run through the kernels' fused
    # layers (``heron.kernels.fused``).
    fused = True

    def __init__(self) -> None:
        self.kernels = require_cpu_kernels()

    def prepare_metadata(self, batch: AttentionBatch) -> CpuAttentionMetadata:
        if int(batch.slot_mapping.shape[0]) <= FLAT_MAX_TOKENS:
            # The kernels attend every token from ``flat``; the padded groups are not needed.
            return CpuAttentionMetadata(
                batch.slot_mapping,
                batch.block_size,
                batch.num_decodes,
                None,
                None,
                flat_tokens(batch),
                batch,
            )
        base = super().prepare_metadata(batch)
        return CpuAttentionMetadata(
            base.slot_mapping,
            base.block_size,
            base.num_decode_tokens,
            base.decode,
            base.prefill,
        )

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
        flat = getattr(metadata, "flat", None)
        usable = kv_cache.dtype in CACHE_DTYPES and q.dtype == torch.float32
        if flat is None or not usable:
            if metadata.decode is None and metadata.prefill is None:  # a cache the kernels
                batch = getattr(metadata, "batch", None)  # cannot read: pad the groups now
                assert batch is not None
                metadata = super().prepare_metadata(batch)
            return super().forward(q, k, v, kv_cache, metadata, scale, sliding_window, softcap)
        self.kernels.cache_write_(k, v, kv_cache[0], kv_cache[1], metadata.slot_mapping)
        # q [num_tokens, heads, dim] -> same shape
        return self.kernels.paged_decode_attention(
            q.contiguous(),
            kv_cache[0],
            kv_cache[1],
            flat.block_table,
            flat.context_lens,
            scale,
            sliding_window or 0,
            softcap or 0.0,
        )
