"""The contract every model file implements."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from heron.attention import AttentionBackend
from heron.layers.linear import Linear
from heron.layers.norm import RMSNorm

if TYPE_CHECKING:
    from heron.kernels.fused import FusedDecoder


@dataclass(frozen=True, slots=True)
class DecoderLayerSpec:
    """One pre-norm decoder layer as plain parts, for code that runs a whole layer at once.

    The layer computes exactly this on x [num_tokens, hidden], with the model's rope cos/sin:

        h = input_norm(x)
        q, k, v = split(qkv_proj(h))          # [q_size | kv_size | kv_size], heads of head_dim
        q, k = rope(q), rope(k)
        write k, v into the paged cache; attn = attention(q, scale, sliding_window)
        x += o_proj(attn); h = post_attention_norm(x)
        gate, up = split(gate_up_proj(h)); x += down_proj(act(gate) * up)
    """

    input_norm: RMSNorm
    qkv_proj: Linear
    o_proj: Linear
    post_attention_norm: RMSNorm
    gate_up_proj: Linear
    down_proj: Linear
    act: str  # "silu", "gelu_pytorch_tanh", ...
    num_heads: int
    num_kv_heads: int
    head_dim: int
    scale: float
    sliding_window: int | None


class CausalLM(nn.Module):
    # Every layer in one kernel call per step, bound by the runner to its KV cache
    # (``heron.kernels.fused.bind_fused_decoder``); None runs the layers one by one.
    fused: FusedDecoder | None = None

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

    def describe_layers(self) -> list[DecoderLayerSpec] | None:
        """Every decoder layer as plain parts, in order, or None when any layer computes
        more than a ``DecoderLayerSpec`` says (then only the model's own forward runs it)."""
        return None

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
