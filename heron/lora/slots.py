"""The slot table: which adapter each of ``max_loras`` slots holds, and writing one in.

Every adapted module of the model has the same number of slots. Slots are taken least
recently used first among those no adapter of the current step needs; the scheduler keeps the
adapters of running requests within ``max_loras``, so a step always finds its slots.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from heron.config import ModelConfig
from heron.kernels import Kernels
from heron.layers.linear import Linear
from heron.lora.layer import LoRALinear, LoRAState
from heron.lora.targets import MODULE_BLOCKS, model_targets
from heron.lora.weights import LoRAError, LoRAWeights


def check_fits(weights: LoRAWeights, dtype: torch.dtype) -> None:
    """Raise LoRAError when a factor of ``weights`` (lora_A, or lora_B with the scale folded
    in, as the slots hold it) overflows ``dtype``: float16 tops out at 65504, and an
    overflowed weight would turn the adapter's every output into inf or NaN."""
    limit = torch.finfo(dtype).max
    for (layer, name), m in weights.modules.items():
        if m.a.abs().max() > limit or (m.b * m.scale).abs().max() > limit:
            raise LoRAError(
                f"layer {layer} {name}: a factor exceeds {str(dtype).removeprefix('torch.')}'s "
                f"range ({limit:g}); serve this adapter with --lora-dtype float32"
            )


class SlotTable:
    """Adopts the model's adaptable linears (``LoRALinear.adopt``) and fills their slots."""

    def __init__(
        self,
        model: nn.Module,
        config: ModelConfig,
        max_loras: int,
        max_rank: int,
        kernels: Kernels | None,
        held: torch.dtype = torch.float16,
    ) -> None:
        """``kernels``: the deltas run on Heron's CPU kernels in float32 (else in float64 on
        torch ops; see ``heron.lora.layer``). ``held``: adapter weights are rounded to this
        dtype (float16 or float32) on either path, so both compute from the same numbers."""
        self.state = LoRAState()
        self.max_rank = max_rank
        self.weight_dtype = held
        self.targets = model_targets(config)
        # [layer][heron module name] -> the adopted linear
        self.modules: list[dict[str, LoRALinear]] = []
        for i in range(config.num_hidden_layers):
            layer: dict[str, LoRALinear] = {}
            for name, blocks in MODULE_BLOCKS.items():
                linear = model.get_submodule(f"layers.{i}.{name}")
                if not isinstance(linear, Linear):
                    raise TypeError(f"layers.{i}.{name} is not a Linear")
                layer[name] = LoRALinear.adopt(
                    linear, self.state, max_loras, blocks, max_rank, kernels, held
                )
            self.modules.append(layer)
        self.held: list[int | None] = [None] * max_loras  # adapter int_id per slot
        self._recent: OrderedDict[int, None] = OrderedDict()  # slots, least recent first

    def slot_of(self, int_id: int) -> int | None:
        try:
            return self.held.index(int_id)
        except ValueError:
            return None

    def touch(self, slot: int) -> None:
        self._recent.pop(slot, None)
        self._recent[slot] = None

    def victim(self, keep: set[int]) -> int:
        """A slot to overwrite: a free one, else the least recently used whose adapter is
        not in ``keep``. Raises RuntimeError when every slot is kept (the scheduler
        admitted more adapters than slots)."""
        for slot, held in enumerate(self.held):
            if held is None:
                return slot
        for slot in self._recent:
            held = self.held[slot]
            if held is None or held not in keep:
                return slot
        raise RuntimeError("every LoRA slot is in use by this step")

    def forget(self, int_id: int) -> None:
        """Drop ``int_id`` from the table (its slot becomes free); no-op when absent."""
        slot = self.slot_of(int_id)
        if slot is not None:
            self.held[slot] = None

    @torch.no_grad()
    def write(self, slot: int, int_id: int, weights: LoRAWeights) -> None:
        """Put ``weights`` in ``slot`` of every module (zeros where it has no target) and
        record it as ``int_id``'s. Mutates the modules' slot tensors."""
        self.held[slot] = None  # half-written slots hold nothing
        for layer in self.modules:
            for linear in layer.values():
                if linear.lora_live[slot]:
                    linear.lora_a[slot].zero_()
                    linear.lora_b[slot].zero_()
                    linear.lora_spans[slot].zero_()
                    linear.lora_live[slot] = False
        r = self.max_rank
        for (i, name), m in weights.modules.items():
            t = self.targets[name]
            linear = self.modules[i][t.module]
            cols = slice(t.block * r, t.block * r + m.rank)
            rows = slice(t.row_start, t.row_start + t.out_features)
            # rounded to the held dtype first: the torch path's float64 slots then hold the
            # very numbers the kernels' float16 or float32 slots do
            a = m.a.t().to(self.weight_dtype)
            b = (m.b.t() * m.scale).to(self.weight_dtype)
            linear.lora_a[slot, :, cols] = a.to(linear.lora_a.dtype)
            linear.lora_b[slot, cols, rows] = b.to(linear.lora_b.dtype)
            # rank, first output column, columns: what the kernels read of a and b
            linear.lora_spans[slot, t.block] = torch.tensor([m.rank, t.row_start, t.out_features])
            linear.lora_live[slot] = True
        self.held[slot] = int_id
        self.touch(slot)
