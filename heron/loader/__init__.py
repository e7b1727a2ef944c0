"""Checkpoint loading: GGUF files and HF safetensors directories behind one entry point.

Both formats produce a ``ModelConfig`` and the same weight stream, ``(hf_name, float32 tensor)``
pairs, so models load weights without knowing where they came from.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from heron.config import ModelConfig
from heron.loader.gguf import GGUFError, GGUFFile, GGUFTensorInfo
from heron.loader.gguf_model import (
    GGUF_ARCHITECTURES,
    config_from_gguf,
    iter_gguf_weights,
    load_gguf_checkpoint,
)
from heron.loader.hf_dir import CheckpointError, iter_safetensors_weights, load_hf_checkpoint

if TYPE_CHECKING:
    import torch

    from heron.loader.dequant import SUPPORTED_TYPES, UnsupportedGGMLTypeError, dequantize

# torch-backed names load on first use: reading a checkpoint's header (as the HTTP process
# does) must not import torch.
_LAZY = {"SUPPORTED_TYPES", "UnsupportedGGMLTypeError", "dequantize"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from heron.loader import dequant

        return getattr(dequant, name)
    raise AttributeError(f"module 'heron.loader' has no attribute {name!r}")


__all__ = [
    "GGUF_ARCHITECTURES",
    "SUPPORTED_TYPES",
    "Checkpoint",
    "CheckpointError",
    "GGUFError",
    "GGUFFile",
    "GGUFTensorInfo",
    "UnsupportedGGMLTypeError",
    "config_from_gguf",
    "dequantize",
    "iter_gguf_weights",
    "iter_safetensors_weights",
    "load_checkpoint",
    "load_gguf_checkpoint",
    "load_hf_checkpoint",
]


@dataclass(slots=True)
class Checkpoint:
    """A loaded checkpoint. ``weights()`` starts a fresh lazy pass over the weights each call.

    For GGUF, ``gguf`` is the open file (the tokenizer reads its vocabulary from
    ``gguf.metadata``); call ``close()`` when the weights are no longer needed.
    """

    config: ModelConfig
    weights: Callable[[], Iterator[tuple[str, torch.Tensor]]]
    format: Literal["gguf", "hf"]
    path: Path
    gguf: GGUFFile | None = None

    def close(self) -> None:
        if self.gguf is not None:
            self.gguf.close()


def _has_gguf_magic(path: Path) -> bool:
    """Store blobs have no suffix: a GGUF file is known by its first four bytes."""
    try:
        with path.open("rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Open a GGUF file (by suffix or by its magic bytes) or an HF checkpoint directory.

    Raises ``GGUFError`` for a bad GGUF file and ``CheckpointError`` for anything else that is
    not a loadable checkpoint (missing path, other file types, pickle-only directories).
    """
    p = Path(path)
    if p.is_dir():
        config = load_hf_checkpoint(p)
        return Checkpoint(config, lambda: iter_safetensors_weights(p), "hf", p)
    if p.is_file() and (p.suffix.lower() == ".gguf" or _has_gguf_magic(p)):
        config, g = load_gguf_checkpoint(p)
        return Checkpoint(config, lambda: iter_gguf_weights(g, config), "gguf", p, g)
    if not p.exists():
        raise CheckpointError(f"{p}: no such file or directory")
    raise CheckpointError(f"{p}: expected a .gguf file or an HF checkpoint directory")
