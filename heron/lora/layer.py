"""The mixed-adapter delta of one adapted linear, and one step's adapter slot per token row.

Every adapted module holds its slot tensors ``a`` [max_loras, in, R], ``b`` [max_loras, R,
out] (R: the module's rank blocks times ``max_lora_rank``; zero-padded, the scale folded into
``b``) and ``spans`` [max_loras, blocks, 3] (per slot and rank block: the adapter's rank, the
first output column and the number of columns it covers; rank 0 where unused).

With Heron's CPU kernels (``LoRALinear.lora_kernels``) the slot tensors are float16 or
float32 (``LoRAConfig.lora_dtype``; float16 by default: one user's delta is bound by reading
them) and the delta is the kernels' ``lora_add_``, float32 arithmetic either way: per token
row, ``(x @ a[slot]) @ b[slot]`` with every output one sum in a fixed order, so a row's
numbers depend neither on the thread count nor on the rest of the batch, and they are the
very numbers the fused decode path computes (``heron.kernels.fused``). Without kernels the
slot tensors are float64, holding the same rounded weights, and the delta is grouped by slot
into two batched matmuls (``bmm``): a float32 BLAS sum's order depends on the thread count,
and in float64 that effect is far below float32's rounding. Either way the step's work is a
few calls however many requests and adapters share it; rows of the base model are left as
the base computed them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from heron.kernels import Kernels
from heron.layers.linear import Linear


@dataclass(frozen=True, slots=True)
class LoRAGroups:
    """The adapted rows grouped by slot, for the float64 torch path: the groups cover slots
    ``lo .. hi - 1``; ``rows`` [(hi - lo) * width] is the token row of each (slot,
    position), padded with row 0, and ``mask`` [hi - lo, width, 1] is 1 for real rows (None
    when nothing is padded)."""

    lo: int
    hi: int
    width: int
    rows: torch.Tensor
    mask: torch.Tensor | None


@dataclass(frozen=True, slots=True)
class LoRABatch:
    """One step's adapted token rows.

    ``token_slots`` [num_tokens] int64: each row's slot, -1 for a row of the base model.
    ``slots``: the slots the step uses. ``whole``: the slot every row uses, if one does.
    ``groups``: the rows by slot for the torch path (None where the kernels compute)."""

    token_slots: torch.Tensor
    slots: tuple[int, ...]
    whole: int | None = None
    groups: LoRAGroups | None = None

    def touches(self, live: list[bool]) -> bool:
        """Whether any of the batch's slots holds weights for a module whose slots are
        ``live``."""
        return any(live[s] for s in self.slots)

    def add_delta_torch(
        self, x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor
    ) -> torch.Tensor:
        """Add each adapted row's low-rank delta to y [.., out] in place (float64 slot
        tensors, grouped rows); returns y."""
        x2 = x.reshape(-1, a.shape[1]).to(a.dtype)
        y2 = y.view(-1, b.shape[2])
        if self.whole is not None:
            y2.add_(torch.mm(torch.mm(x2, a[self.whole]), b[self.whole]).to(y.dtype))
            return y
        g = self.groups
        assert g is not None
        xp = x2.index_select(0, g.rows).view(g.hi - g.lo, g.width, -1)
        xa = torch.bmm(xp, a[g.lo : g.hi])  # [groups, width, R]
        if g.mask is not None:
            xa.mul_(g.mask)  # padded rows add nothing
        delta = torch.bmm(xa, b[g.lo : g.hi])  # [groups, width, out]
        y2.index_add_(0, g.rows, delta.view(-1, b.shape[2]).to(y.dtype))
        return y


class LoRAState:
    """What every adapted module of one model reads: the running step's batch (None when
    no row of the step uses an adapter)."""

    __slots__ = ("batch",)

    def __init__(self) -> None:
        self.batch: LoRABatch | None = None


class LoRALinear(Linear):
    """A ``Linear`` that adds its adapters' deltas when the step has adapted rows.

    ``adopt`` turns an existing (possibly quantized) ``Linear`` into one in place, so every
    holder of the module (the model, its layer descriptions) keeps the same object."""

    lora_a: torch.Tensor
    lora_b: torch.Tensor
    lora_spans: torch.Tensor
    lora_live: list[bool]  # per slot: its adapter targets this module (else its rows are 0)
    lora_state: LoRAState
    lora_kernels: Kernels | None

    @classmethod
    def adopt(
        cls,
        linear: Linear,
        state: LoRAState,
        slots: int,
        blocks: int,
        max_rank: int,
        kernels: Kernels | None,
        held: torch.dtype = torch.float32,
    ) -> LoRALinear:
        """Make ``linear`` a LoRALinear with zeroed slot tensors: ``slots`` slots of
        ``blocks`` rank blocks of ``max_rank`` (``held``, float16 or float32, for ``kernels``;
        else float64); mutates and returns it."""
        linear.__class__ = cls  # same object and state, LoRA forward
        adopted = linear if isinstance(linear, LoRALinear) else None
        assert adopted is not None
        dtype = held if kernels is not None else torch.float64
        width = blocks * max_rank
        adopted.lora_state = state
        adopted.lora_kernels = kernels
        adopted.lora_live = [False] * slots
        adopted.lora_a = torch.zeros(slots, linear.in_features, width, dtype=dtype)
        adopted.lora_b = torch.zeros(slots, width, linear.out_features, dtype=dtype)
        adopted.lora_spans = torch.zeros(slots, blocks, 3, dtype=torch.long)
        return adopted

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        batch = self.lora_state.batch
        if batch is None or not batch.touches(self.lora_live):
            return y
        kernels = self.lora_kernels
        if kernels is None:
            return batch.add_delta_torch(x, y, self.lora_a, self.lora_b)
        # x [.., in] -> [num_tokens, in]; y [.., out] -> [num_tokens, out], float32 rows
        x2 = x.reshape(-1, self.in_features).float().contiguous()
        y2 = y.view(-1, self.out_features)
        if y2.dtype == torch.float32 and y2.is_contiguous():
            kernels.lora_add_(y2, x2, self.lora_a, self.lora_b, self.lora_spans, batch.token_slots)
            return y
        out = y2.float().contiguous()
        kernels.lora_add_(out, x2, self.lora_a, self.lora_b, self.lora_spans, batch.token_slots)
        return out.to(y.dtype).view(y.shape)
