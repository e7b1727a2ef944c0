"""``LoRARequest``: which adapter a request runs with. It travels in the engine protocol."""

from __future__ import annotations

import msgspec


class LoRARequest(msgspec.Struct, frozen=True):
    """A LoRA adapter for one request, as vLLM spells it.

    ``name`` is the adapter's public name (``lora_name``); ``int_id`` (> 0) identifies the
    adapter in the engine: two requests with the same ``int_id`` share one loaded copy, its
    slot and its prefix-cache entries, so it must be unique per adapter. ``path`` is a PEFT
    directory (``adapter_config.json`` + ``adapter_model.safetensors``) or a GGUF LoRA file.
    """

    name: str
    int_id: int
    path: str

    def __post_init__(self) -> None:
        if isinstance(self.int_id, bool) or self.int_id <= 0:
            raise ValueError(f"LoRARequest.int_id must be a positive integer, got {self.int_id}")
        if not self.name:
            raise ValueError("LoRARequest.name must not be empty")
