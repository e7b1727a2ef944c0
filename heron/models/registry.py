"""Model classes, keyed by the architecture named in the checkpoint's config, imported lazily."""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from heron.config import ModelConfig

if TYPE_CHECKING:  # the classes (and torch) load with the first model built
    from heron.models.base import CausalLM, EmbeddingModel

_MODELS: dict[str, tuple[str, str]] = {
    "LlamaForCausalLM": ("heron.models.llama", "LlamaForCausalLM"),
    "MistralForCausalLM": ("heron.models.mistral", "MistralForCausalLM"),
    "Qwen2ForCausalLM": ("heron.models.qwen2", "Qwen2ForCausalLM"),
    "Qwen3ForCausalLM": ("heron.models.qwen3", "Qwen3ForCausalLM"),
    "Phi3ForCausalLM": ("heron.models.phi3", "Phi3ForCausalLM"),
    "Gemma3ForCausalLM": ("heron.models.gemma3", "Gemma3ForCausalLM"),
}


# Encoders that produce embeddings; they never generate.
_EMBEDDING_MODELS: dict[str, tuple[str, str]] = {
    "BertModel": ("heron.models.bert", "BertModel"),
    "BertForMaskedLM": ("heron.models.bert", "BertModel"),  # the MLM head is not loaded
}


def supported_architectures() -> list[str]:
    return sorted(_MODELS | _EMBEDDING_MODELS)


def is_embedding_architecture(architecture: str) -> bool:
    """Whether the architecture is an encoder served for embeddings (not generation)."""
    return architecture in _EMBEDDING_MODELS


def build_embedding_model(config: ModelConfig) -> EmbeddingModel:
    if config.architecture not in _EMBEDDING_MODELS:
        raise ValueError(
            f"architecture {config.architecture!r} is not an embedding model; embedding "
            f"models: {sorted(_EMBEDDING_MODELS)}"
        )
    module_name, class_name = _EMBEDDING_MODELS[config.architecture]
    cls: type[EmbeddingModel] = getattr(importlib.import_module(module_name), class_name)
    return cls(config)


def get_model_class(architecture: str) -> type[CausalLM]:
    if architecture in _EMBEDDING_MODELS:
        raise ValueError(
            f"{architecture!r} is an embedding model: it does not support generate "
            "(use LLM.embed or the embeddings endpoints)"
        )
    if architecture not in _MODELS:
        raise ValueError(
            f"unsupported architecture {architecture!r}; supported: {supported_architectures()}"
        )
    module_name, class_name = _MODELS[architecture]
    cls: type[CausalLM] = getattr(importlib.import_module(module_name), class_name)
    return cls


def build_model(config: ModelConfig) -> CausalLM:
    return get_model_class(config.architecture)(config)
