"""Mistral: the Llama decoder with sliding-window attention on every layer.

The window (``sliding_window`` in the config) is applied by the attention backend over the
paged cache: a query at position p sees keys at positions p - window + 1 .. p. Blocks that fall
outside the window stay allocated; only the mask excludes them.
"""

from __future__ import annotations

from heron.config import ModelConfig
from heron.models.llama import LlamaAttention, LlamaForCausalLM


class MistralAttention(LlamaAttention):
    @staticmethod
    def layer_window(config: ModelConfig, layer_id: int) -> int | None:
        return config.sliding_window


class MistralForCausalLM(LlamaForCausalLM):
    attention_cls = MistralAttention
