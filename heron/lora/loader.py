"""``load_adapter``: a PEFT directory or a GGUF LoRA file, validated against a base model."""

from __future__ import annotations

import os

from heron.config import ModelConfig
from heron.lora.gguf_adapter import is_gguf_file, load_gguf_adapter
from heron.lora.peft import is_peft_dir, load_peft
from heron.lora.weights import LoRAError, LoRAWeights


def load_adapter(path: str, config: ModelConfig, max_rank: int) -> LoRAWeights:
    """The adapter at ``path`` for a base model with ``config``, with ranks up to
    ``max_rank``. Reads files only; changes nothing. Raises LoRAError when the path holds no
    adapter, or it is unreadable, malformed or does not fit (the message names the problem)."""
    if is_peft_dir(path):
        return load_peft(path, config, max_rank)
    if os.path.isfile(path) and is_gguf_file(path):
        return load_gguf_adapter(path, config, max_rank)
    if not os.path.exists(path):
        raise LoRAError(f"{path}: no such adapter (a PEFT directory or a GGUF LoRA file)")
    raise LoRAError(
        f"{path}: not a LoRA adapter (expected a PEFT directory with adapter_config.json, "
        "or a GGUF LoRA file)"
    )
