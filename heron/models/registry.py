"""Model classes, keyed by the architecture named in the checkpoint's config, imported lazily."""

from __future__ import annotations

import importlib

from heron.config import ModelConfig
from heron.models.base import CausalLM

_MODELS: dict[str, tuple[str, str]] = {
    "LlamaForCausalLM": ("heron.models.llama", "LlamaForCausalLM"),
    "MistralForCausalLM": ("heron.models.llama", "LlamaForCausalLM"),
    "Qwen2ForCausalLM": ("heron.models.llama", "LlamaForCausalLM"),
}


def supported_architectures() -> list[str]:
    return sorted(_MODELS)


def get_model_class(architecture: str) -> type[CausalLM]:
    if architecture not in _MODELS:
        raise ValueError(
            f"unsupported architecture {architecture!r}; supported: {supported_architectures()}"
        )
    module_name, class_name = _MODELS[architecture]
    cls: type[CausalLM] = getattr(importlib.import_module(module_name), class_name)
    return cls


def build_model(config: ModelConfig) -> CausalLM:
    return get_model_class(config.architecture)(config)
