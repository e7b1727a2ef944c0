"""The contract every model file implements."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from heron.attention import AttentionBackend


class CausalLM(nn.Module):
    @abstractmethod
    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        kv_caches: torch.Tensor,
        backend: AttentionBackend,
        metadata: Any,
    ) -> torch.Tensor:
        """Run every scheduled token. input_ids, positions [num_tokens]; kv_caches
        [num_layers, 2, num_blocks, block_size, num_kv_heads, head_dim], written in place.
        Returns the final hidden states [num_tokens, hidden]."""

    @abstractmethod
    def compute_logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """[num_rows, hidden] -> fp32 logits [num_rows, vocab]."""

    @abstractmethod
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy checkpoint tensors (HF names) into parameters. Raises on an unknown tensor,
        a wrong shape, or a parameter left unloaded."""


class EmbeddingModel(nn.Module):
    """An encoder that turns a padded batch of token ids into per-token hidden states.

    No KV cache: every sequence is encoded whole in one forward. Pooling into one vector per
    sequence happens outside the model (``heron.layers.pooling``)."""

    @abstractmethod
    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """input_ids [batch, seq_len] right-padded; attention_mask [batch, seq_len] bool, True
        for real tokens. Returns hidden states [batch, seq_len, hidden] (padded rows are
        undefined and must be masked out by the caller)."""

    @abstractmethod
    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Copy checkpoint tensors (HF names) into parameters. Raises on an unknown tensor,
        a wrong shape, or a parameter left unloaded."""
