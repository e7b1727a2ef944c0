"""The attention backend contract.

A backend prepares metadata once per step from host-side lists (``prepare_metadata``) and is
then called once per layer (``forward``). The torch backend is the reference that every
faster backend is tested against.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(slots=True)
class AttentionBatch:
    """Host-side description of one step, in the runner's flat token order.

    The first ``num_decodes`` sequences have exactly one query token each; the rest are
    prefill chunks. Sequence ``i`` owns ``query_lens[i]`` consecutive flat tokens, and after this
    step's writes its cache holds ``context_lens[i]`` tokens in ``block_tables[i]``.
    """

    query_lens: list[int]
    context_lens: list[int]
    block_tables: list[list[int]]
    num_decodes: int
    slot_mapping: torch.Tensor  # [num_tokens] int64: flat cache slot of each new token
    block_size: int


class AttentionBackend(ABC):
    """One instance per model; stateless between steps apart from its metadata."""

    @abstractmethod
    def prepare_metadata(self, batch: AttentionBatch) -> Any:
        """Build device tensors for this step. Called once per step, before the forward."""

    @abstractmethod
    def forward(
        self,
        q: torch.Tensor,
        k: torch.Tensor,
        v: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: Any,
        scale: float,
        sliding_window: int | None = None,
        softcap: float | None = None,
    ) -> torch.Tensor:
        """Write ``k``/``v`` into ``kv_cache`` at the step's slots, then attend.

        Shapes: q [num_tokens, num_heads, head_dim]; k, v [num_tokens, num_kv_heads, head_dim];
        kv_cache [2, num_blocks, block_size, num_kv_heads, head_dim] (mutated in place).
        Returns [num_tokens, num_heads, head_dim]. Each query attends causally to its own
        sequence's cached tokens, within ``sliding_window`` when one is given: a query at
        position p sees keys at positions p - sliding_window + 1 .. p. Both are per call, so
        layers of one model may differ. With ``softcap``, scaled scores s become
        ``softcap * tanh(s / softcap)`` before masking and softmax.
        """
