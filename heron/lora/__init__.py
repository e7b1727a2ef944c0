"""LoRA adapters on one base model: loading (PEFT directories, GGUF LoRA files), the slot
table and the batched mixed-adapter delta (``heron.lora.manager.LoRAManager``, which the
model runner owns when ``EngineConfig.lora`` is set)."""

from heron.lora.loader import load_adapter
from heron.lora.request import LoRARequest
from heron.lora.weights import LoRAError, LoRAModule, LoRAWeights

__all__ = ["LoRAError", "LoRAModule", "LoRARequest", "LoRAWeights", "load_adapter"]
