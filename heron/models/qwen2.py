"""Qwen2 and Qwen2.5: the Llama decoder with q/k/v biases (no output bias).

Sliding windows apply per layer, as the config says: layers marked ``sliding_attention`` in
``layer_types``, or, in configs without that list, layers from ``max_window_layers`` on. The
released Qwen2/2.5 checkpoints set ``use_sliding_window: false``, so every layer attends fully.
"""

from __future__ import annotations

from heron.config import ModelConfig
from heron.models.llama import LlamaAttention, LlamaForCausalLM

# transformers' Qwen2/Qwen3 default when a config.json leaves max_window_layers out
_DEFAULT_MAX_WINDOW_LAYERS = 28


def qwen_layer_window(config: ModelConfig, layer_id: int) -> int | None:
    """The sliding window of one Qwen2/Qwen3 layer, None for full attention."""
    if config.sliding_window is None:
        return None
    hf = config.extra.get("hf_config")
    if not isinstance(hf, dict):  # GGUF: no per-layer pattern, the window is global
        return config.sliding_window
    types = hf.get("layer_types")
    if isinstance(types, list) and len(types) == config.num_hidden_layers:
        return config.sliding_window if types[layer_id] == "sliding_attention" else None
    first = hf.get("max_window_layers", _DEFAULT_MAX_WINDOW_LAYERS)
    return config.sliding_window if layer_id >= first else None


class Qwen2Attention(LlamaAttention):
    @staticmethod
    def biases(config: ModelConfig) -> tuple[bool, bool]:
        return True, False

    @staticmethod
    def layer_window(config: ModelConfig, layer_id: int) -> int | None:
        return qwen_layer_window(config, layer_id)


class Qwen2ForCausalLM(LlamaForCausalLM):
    attention_cls = Qwen2Attention
