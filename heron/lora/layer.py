"""The mixed-adapter delta of one adapted linear, and one step's grouping of tokens by slot.

Every adapted module holds its slot tensors ``a`` [max_loras, in, R] and ``b``
[max_loras, R, out] (R: the module's rank blocks times ``max_lora_rank``; zero-padded, the
scale folded into ``b``; float64, see ``LoRAManager``). A step's ``LoRABatch`` groups the token rows that use an adapter
by slot, padded to the longest group, so each module adds ``x @ a[slot] @ b[slot]`` for every
adapted row with two batched matmuls (``bmm`` over the step's slots), one gather and one
scatter-add: the same few calls however many requests and adapters share the step. Rows of
the base model are left as the base computed them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from heron.layers.linear import Linear


@dataclass(frozen=True, slots=True)
class LoRABatch:
    """One step's adapted token rows, grouped by slot.

    ``whole``: the slot every row of the step uses (then no gather is needed). Otherwise the
    groups cover slots ``lo .. hi - 1``: ``rows`` [(hi - lo) * width] is the token row of
    each (slot, position), padded with row 0, and ``mask`` [hi - lo, width, 1] is 1 for real
    rows (None when nothing is padded)."""

    whole: int | None
    lo: int = 0
    hi: int = 0
    width: int = 0
    rows: torch.Tensor | None = None
    mask: torch.Tensor | None = None

    def touches(self, live: list[bool]) -> bool:
        """Whether any of the batch's slots holds weights for a module whose slots are
        ``live``."""
        if self.whole is not None:
            return live[self.whole]
        return any(live[self.lo : self.hi])

    def add_delta(
        self, x: torch.Tensor, y: torch.Tensor, a: torch.Tensor, b: torch.Tensor
    ) -> torch.Tensor:
        """Add each adapted row's low-rank delta to y [.., out] in place; returns y."""
        x2 = x.reshape(-1, a.shape[1]).to(a.dtype)
        y2 = y.view(-1, b.shape[2])
        if self.whole is not None:
            y2.add_(torch.mm(torch.mm(x2, a[self.whole]), b[self.whole]).to(y.dtype))
            return y
        assert self.rows is not None
        groups = self.hi - self.lo
        xp = x2.index_select(0, self.rows).view(groups, self.width, -1)
        xa = torch.bmm(xp, a[self.lo : self.hi])  # [groups, width, R]
        if self.mask is not None:
            xa.mul_(self.mask)  # padded rows add nothing
        delta = torch.bmm(xa, b[self.lo : self.hi])  # [groups, width, out]
        y2.index_add_(0, self.rows, delta.view(-1, b.shape[2]).to(y.dtype))
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
    lora_live: list[bool]  # per slot: its adapter targets this module (else its rows are 0)
    lora_state: LoRAState

    @classmethod
    def adopt(
        cls, linear: Linear, state: LoRAState, slots: int, width: int, dtype: torch.dtype
    ) -> LoRALinear:
        """Make ``linear`` a LoRALinear with zeroed slot tensors ``slots`` x rank ``width``;
        mutates and returns it."""
        linear.__class__ = cls  # same object and state, LoRA forward
        adopted = linear if isinstance(linear, LoRALinear) else None
        assert adopted is not None
        adopted.lora_state = state
        adopted.lora_live = [False] * slots
        adopted.lora_a = torch.zeros(slots, linear.in_features, width, dtype=dtype)
        adopted.lora_b = torch.zeros(slots, width, linear.out_features, dtype=dtype)
        return adopted

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = super().forward(x)
        batch = self.lora_state.batch
        if batch is None or not batch.touches(self.lora_live):
            return y
        return batch.add_delta(x, y, self.lora_a, self.lora_b)
