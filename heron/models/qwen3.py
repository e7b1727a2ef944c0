"""Qwen3: the Llama decoder with an RMSNorm over each head of q and k before rope.

No q/k/v bias (``attention_bias`` as in Llama), and ``head_dim`` comes from the config: it
need not be ``hidden_size / num_attention_heads`` (Qwen3-0.6B: 1024 / 16 heads, head_dim 128).
Sliding windows per layer as in Qwen2.
"""

from __future__ import annotations

import torch

from heron.config import ModelConfig
from heron.layers.norm import RMSNorm
from heron.models.llama import LlamaAttention, LlamaForCausalLM
from heron.models.qwen2 import qwen_layer_window


class Qwen3Attention(LlamaAttention):
    def __init__(self, config: ModelConfig, layer_id: int) -> None:
        super().__init__(config, layer_id)
        # one weight [head_dim] shared by every head
        self.q_norm = RMSNorm(self.head_dim, config.rms_norm_eps)
        self.k_norm = RMSNorm(self.head_dim, config.rms_norm_eps)

    @staticmethod
    def layer_window(config: ModelConfig, layer_id: int) -> int | None:
        return qwen_layer_window(config, layer_id)

    def norm_qk(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # q [num_tokens, num_heads, head_dim], k [num_tokens, num_kv_heads, head_dim]
        return self.q_norm(q), self.k_norm(k)


class Qwen3ForCausalLM(LlamaForCausalLM):
    attention_cls = Qwen3Attention
