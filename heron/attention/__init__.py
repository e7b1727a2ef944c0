"""Attention backends, registered by name and imported lazily."""

from __future__ import annotations

import importlib

from heron.attention.base import AttentionBackend, AttentionBatch

_BACKENDS: dict[str, tuple[str, str]] = {
    "torch": ("heron.attention.torch_ref", "TorchAttentionBackend"),
    "cpu": ("heron.attention.cpu", "CpuAttentionBackend"),
}


def get_attention_backend(name: str) -> AttentionBackend:
    if name not in _BACKENDS:
        raise ValueError(f"unknown attention backend {name!r}; known: {sorted(_BACKENDS)}")
    module_name, class_name = _BACKENDS[name]
    cls = getattr(importlib.import_module(module_name), class_name)
    backend: AttentionBackend = cls()
    return backend


__all__ = ["AttentionBackend", "AttentionBatch", "get_attention_backend"]
