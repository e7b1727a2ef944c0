"""LoRA adapters on one base model: loading (PEFT directories, GGUF LoRA files), the slot
table and the batched mixed-adapter delta (``heron.lora.manager.LoRAManager``, which the
model runner owns when ``EngineConfig.lora`` is set).

The public names load lazily, so that importing ``heron.lora.request`` (as the engine
protocol, and so the HTTP process, does) does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from heron.lora.loader import load_adapter
    from heron.lora.request import LoRARequest
    from heron.lora.weights import LoRAError, LoRAModule, LoRAWeights

_EXPORTS = {
    "load_adapter": "heron.lora.loader",
    "LoRARequest": "heron.lora.request",
    "LoRAError": "heron.lora.weights",
    "LoRAModule": "heron.lora.weights",
    "LoRAWeights": "heron.lora.weights",
}

__all__ = ["LoRAError", "LoRAModule", "LoRARequest", "LoRAWeights", "load_adapter"]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'heron.lora' has no attribute {name!r}")
