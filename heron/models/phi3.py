"""Phi-3 (Phi-3/3.5-mini, Phi-4-mini): the Llama decoder with three differences.

- Checkpoints store q/k/v as one ``qkv_proj`` and gate/up as one ``gate_up_proj`` (GGUF:
  ``attn_qkv`` and ``ffn_up``); they load whole into the fused parameters. Split tensors load
  too (``checkpoint_target`` keeps the Llama mapping).
- Rope may rotate only the leading ``partial_rotary_factor * head_dim`` dims of each head
  (GGUF: ``rope.dimension_count``), and may be scaled by LongRoPE (``longrope``, or ``su`` in
  older configs). Any other rope scaling type is refused with a ValueError.
- ``sliding_window`` (Phi-3-mini-4k: 2047) applies to every layer.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from heron.config import ModelConfig
from heron.layers.rotary import LongRopeEmbedding, RotaryEmbedding
from heron.models.llama import LlamaAttention, LlamaForCausalLM

_LONGROPE = ("longrope", "su")


class Phi3Attention(LlamaAttention):
    @staticmethod
    def layer_window(config: ModelConfig, layer_id: int) -> int | None:
        return config.sliding_window


def _hf_config(config: ModelConfig) -> dict[str, Any]:
    hf = config.extra.get("hf_config")
    return hf if isinstance(hf, dict) else {}


def _factors(config: ModelConfig, kind: str, rotary_dim: int) -> torch.Tensor:
    """``short``/``long`` LongRoPE divisors [rotary_dim // 2], from config.json's lists or the
    GGUF ``rope_factors_*`` tensors."""
    value = (config.rope_scaling or {}).get(f"{kind}_factor")
    if value is None:
        value = config.extra.get(f"rope_factors_{kind}")
    if value is None:
        raise ValueError(f"Phi-3 longrope scaling needs {kind}_factor")
    factors = torch.as_tensor(value, dtype=torch.float32).flatten()
    if factors.numel() != rotary_dim // 2:
        raise ValueError(
            f"Phi-3 longrope {kind}_factor has {factors.numel()} entries, expected {rotary_dim // 2}"
        )
    return factors


class Phi3ForCausalLM(LlamaForCausalLM):
    attention_cls = Phi3Attention

    def checkpoint_target(self, name: str) -> tuple[str, tuple[int, ...] | None]:
        # The fused tensors cover every shard of their parameter.
        if ".qkv_proj." in name:
            return name, (0, 1, 2)
        if ".gate_up_proj." in name:
            return name, (0, 1)
        return super().checkpoint_target(name)

    @classmethod
    def rotary_dim(cls, config: ModelConfig) -> int:
        if (count := config.extra.get("rope_dimension_count")) is not None:
            dim = int(count)  # GGUF
        else:
            factor = (config.rope_scaling or {}).get("partial_rotary_factor")
            if factor is None:
                factor = _hf_config(config).get("partial_rotary_factor", 1.0)
            dim = int(config.head_dim * float(factor))
        if not 0 < dim <= config.head_dim or dim % 2:
            raise ValueError(f"Phi-3: rotary dims {dim} must be even and in (0, {config.head_dim}]")
        return dim

    @classmethod
    def build_rotary(cls, config: ModelConfig, rotary_dim: int) -> RotaryEmbedding:
        scaling = config.rope_scaling or {}
        rope_type = scaling.get("rope_type", "default")
        max_pos = config.max_position_embeddings
        if rope_type == "default":
            return RotaryEmbedding(rotary_dim, max_pos, config.rope_theta)
        if rope_type not in _LONGROPE:
            raise ValueError(
                f"Phi-3: unsupported rope scaling type {rope_type!r}; Heron supports "
                "'longrope' (also spelled 'su') and no scaling"
            )
        original = scaling.get("original_max_position_embeddings") or _hf_config(config).get(
            "original_max_position_embeddings"
        )
        if not isinstance(original, int) or original <= 0:
            raise ValueError("Phi-3 longrope scaling needs original_max_position_embeddings")
        factor = float(scaling.get("factor") or max_pos / original)
        attention_factor = scaling.get("attention_factor")
        if attention_factor is None:
            attention_factor = 1.0
            if factor > 1.0:
                attention_factor = math.sqrt(1 + math.log(factor) / math.log(original))
        return LongRopeEmbedding(
            rotary_dim,
            max_pos,
            config.rope_theta,
            _factors(config, "short", rotary_dim),
            _factors(config, "long", rotary_dim),
            original,
            float(attention_factor),
        )
