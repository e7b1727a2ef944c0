"""The engine: the core (model, KV cache, scheduler; token ids only), its process and client,
the output processor, and the offline front ends ``LLM`` and ``LLMEngine``.

The public names load lazily, so that importing ``heron.engine.protocol`` (as the HTTP
process does) stays light.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {"LLM": "heron.engine.llm", "LLMEngine": "heron.engine.llm_engine"}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'heron.engine' has no attribute {name!r}")
