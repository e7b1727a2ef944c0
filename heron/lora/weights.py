"""An adapter's validated weights: per decoder layer and target, ``A`` [rank, in] and
``B`` [out, rank] with the scale of their product, checked against the base model."""

from __future__ import annotations

import hashlib
import math
import struct
from dataclasses import dataclass

import torch

from heron.config import ModelConfig
from heron.lora.targets import model_targets


class LoRAError(ValueError):
    """A LoRA adapter is unreadable, malformed or does not fit the base model; the message
    names the adapter and the problem. Nothing was loaded."""


@dataclass(frozen=True, slots=True)
class LoRAModule:
    """One target's factors: its delta is ``scale * b @ a`` (a [rank, in], b [out, rank])."""

    a: torch.Tensor
    b: torch.Tensor
    scale: float

    @property
    def rank(self) -> int:
        return int(self.a.shape[0])


@dataclass(frozen=True, slots=True)
class LoRAWeights:
    """A whole adapter, validated: ``modules`` by (layer index, HF target name)."""

    source: str  # where it came from, for messages
    modules: dict[tuple[int, str], LoRAModule]
    digest: bytes  # sha256 of the math (factors and scales): equal digests, equal outputs

    @property
    def rank(self) -> int:
        return max(m.rank for m in self.modules.values())

    @property
    def nbytes(self) -> int:
        return sum(m.a.nbytes + m.b.nbytes for m in self.modules.values())


# (layer, target) -> (A, B, scale), as a format loader found them.
RawModules = dict[tuple[int, str], tuple[torch.Tensor | None, torch.Tensor | None, float]]


def build_weights(source: str, raw: RawModules, config: ModelConfig, max_rank: int) -> LoRAWeights:
    """Check ``raw`` against a base model with ``config`` and a rank cap; returns the
    adapter as float32 tensors. Raises LoRAError naming the first problem: no tensors, a
    layer or target the model does not have, a missing half, a shape that does not fit, a
    rank over ``max_rank``, two targets on one rank block (``qkv_proj`` with ``q_proj``),
    or a value that is not finite."""
    if not raw:
        raise LoRAError(f"{source}: the adapter has no LoRA tensors")
    targets = model_targets(config)
    modules: dict[tuple[int, str], LoRAModule] = {}
    blocks: dict[tuple[int, str, int], str] = {}
    for (layer, name), (a, b, scale) in sorted(raw.items()):
        where = f"{source}: layer {layer} {name}"
        target = targets.get(name)
        if target is None:
            known = ", ".join(targets)
            raise LoRAError(f"{where}: unknown target module {name!r} (supported: {known})")
        if not 0 <= layer < config.num_hidden_layers:
            raise LoRAError(
                f"{where}: the base model has {config.num_hidden_layers} layers, not {layer + 1}"
            )
        if a is None or b is None:
            raise LoRAError(f"{where}: lora_{'A' if a is None else 'B'} is missing")
        if a.dim() != 2 or b.dim() != 2:
            raise LoRAError(f"{where}: LoRA factors must be matrices")
        rank = a.shape[0]
        want_a, want_b = (rank, target.in_features), (target.out_features, rank)
        if tuple(a.shape) != want_a or tuple(b.shape) != want_b:
            raise LoRAError(
                f"{where}: shapes A {tuple(a.shape)} and B {tuple(b.shape)} do not fit the base "
                f"model (expected A {want_a}, B {want_b})"
            )
        if not 1 <= rank <= max_rank:
            raise LoRAError(f"{where}: rank {rank} is over max_lora_rank {max_rank}")
        if not math.isfinite(scale):
            raise LoRAError(f"{where}: the scale {scale} is not finite")
        key = (layer, target.module, target.block)
        if key in blocks:
            raise LoRAError(f"{where}: overlaps {blocks[key]!r} in the same layer")
        blocks[key] = name
        a32, b32 = a.detach().float().contiguous(), b.detach().float().contiguous()
        if not (torch.isfinite(a32).all() and torch.isfinite(b32).all()):
            raise LoRAError(f"{where}: the factors hold values that are not finite")
        modules[(layer, name)] = LoRAModule(a32, b32, float(scale))
    return LoRAWeights(source, modules, _digest(modules))


def _digest(modules: dict[tuple[int, str], LoRAModule]) -> bytes:
    h = hashlib.sha256()
    for (layer, name), m in sorted(modules.items()):
        h.update(struct.pack("<I", layer) + name.encode() + struct.pack("<d", m.scale))
        h.update(m.a.numpy().tobytes())
        h.update(m.b.numpy().tobytes())
    return h.digest()
