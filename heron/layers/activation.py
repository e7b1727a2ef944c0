"""Gated MLP activations."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

_ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "silu": F.silu,
    "gelu": F.gelu,
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
}


def gated_activation(name: str, gate_up: torch.Tensor) -> torch.Tensor:
    """``act(gate) * up`` for a fused ``[num_tokens, 2 * intermediate]`` projection."""
    gate, up = gate_up.chunk(2, dim=-1)
    return _ACTIVATIONS[name](gate) * up


def check_activation(name: str) -> None:
    if name not in _ACTIVATIONS:
        raise ValueError(f"unsupported activation {name!r}; known: {sorted(_ACTIVATIONS)}")
