"""Heron: an LLM serving engine with a paged KV cache and continuous batching.

The public names are imported lazily so that ``import heron.config`` stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_EXPORTS = {
    "LLM": "heron.engine.llm",
    "LLMEngine": "heron.engine.llm_engine",
    "SamplingParams": "heron.sampling_params",
    "RequestOutput": "heron.outputs",
    "CompletionOutput": "heron.outputs",
    "Logprob": "heron.outputs",
    "CacheConfig": "heron.config",
    "EngineConfig": "heron.config",
    "ModelConfig": "heron.config",
    "SchedulerConfig": "heron.config",
}

__all__ = [*sorted(_EXPORTS), "__version__"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'heron' has no attribute {name!r}")
