"""LoRA adapters on one base model: loading (PEFT directories, GGUF LoRA files), the slot
table and the batched mixed-adapter delta."""

from heron.lora.request import LoRARequest

__all__ = ["LoRARequest"]
