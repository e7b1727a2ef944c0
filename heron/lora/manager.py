"""``LoRAManager``: the engine's adapters. Loads and validates them (``add``), keeps up to
``max_cpu_loras`` in CPU memory (least recently used dropped first, never one a live request
names), gives each step's adapters a slot and each row of the step its slot (``plan``), and
makes the step's forward use them (``active``): the fused decode path where the manager bound
it (``bind``), else the layers one by one."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from heron.config import LoRAConfig, ModelConfig
from heron.kernels import Kernels
from heron.kernels.fused import FusedDecoder
from heron.lora.layer import LoRABatch, LoRAGroups
from heron.lora.loader import load_adapter
from heron.lora.request import LoRARequest
from heron.lora.slots import SlotTable, check_fits
from heron.lora.weights import LoRAError, LoRAWeights
from heron.models.base import CausalLM
from heron.scheduler.output import ScheduledRequest

# A cache salt is UTF-8 text, which never holds this byte: an adapter's key cannot collide.
_SALT_MARK = b"\xff"


def lora_cache_key(digest: bytes, cache_salt: bytes | None) -> bytes:
    """The prefix-cache extra key of a request on the adapter with ``digest``: blocks of two
    adapters (or of an adapter and the base) never match."""
    return _SALT_MARK + digest + (cache_salt or b"")


class LoRAManager:
    def __init__(
        self,
        model: CausalLM,
        model_config: ModelConfig,
        config: LoRAConfig,
        kernels: Kernels | None = None,
    ) -> None:
        """``kernels``: the runner's CPU kernels (the level its fused decode path runs on).
        The deltas must not depend on the thread count: a quantized base's per-row activation
        rounding turns a float32 BLAS sum's thread-dependent 1e-7 into visible logit changes.
        With kernels they are float32 sums in a fixed order (``lora_add_``) over slot weights
        held in ``config.held_dtype``, the numbers the fused path computes too; without,
        float64 torch products of the same rounded weights (``heron.lora.layer``)."""
        self.model = model
        self.model_config = model_config
        self.config = config
        self.kernels = kernels
        self.table = SlotTable(
            model,
            model_config,
            config.max_loras,
            config.max_lora_rank,
            kernels,
            getattr(torch, config.held_dtype),
        )
        self._fused: FusedDecoder | None = None  # the fused decoder holding the slot tensors
        # int_id -> (request, weights), least recently added or used first
        self.loaded: OrderedDict[int, tuple[LoRARequest, LoRAWeights]] = OrderedDict()

    # ---------------------------------------------------------------- adapters
    def add(self, lora: LoRARequest, in_use: set[int]) -> bytes:
        """Load ``lora`` unless it is loaded; returns its digest (its prefix-cache key).
        May drop least recently used adapters not in ``in_use`` to stay within
        ``max_cpu_loras``. Raises LoRAError for a bad adapter, or an ``int_id`` already
        loaded from another path; then nothing changes."""
        held = self.loaded.get(lora.int_id)
        if held is not None:
            if held[0].path != lora.path:
                raise LoRAError(
                    f"LoRA int_id {lora.int_id} is already adapter {held[0].name!r} from "
                    f"{held[0].path!r}, not {lora.path!r}"
                )
            self.loaded.move_to_end(lora.int_id)
            return held[1].digest
        weights = load_adapter(lora.path, self.model_config, self.config.max_lora_rank)
        check_fits(weights, self.table.weight_dtype)
        self.table.forget(lora.int_id)  # a reused int_id must not find old weights
        self.loaded[lora.int_id] = (lora, weights)
        self._shrink(in_use | {lora.int_id})
        return weights.digest

    def _shrink(self, keep: set[int]) -> None:
        cap = self.config.max_cpu_loras or self.config.max_loras
        for int_id in list(self.loaded):
            if len(self.loaded) <= cap:
                return
            if int_id not in keep:
                del self.loaded[int_id]

    def remove(self, int_id: int) -> bool:
        """Forget an adapter (its slot too); False when it was not loaded."""
        self.table.forget(int_id)
        return self.loaded.pop(int_id, None) is not None

    @property
    def adapters(self) -> list[LoRARequest]:
        """The adapters in CPU memory, least recently used first."""
        return [lora for lora, _ in self.loaded.values()]

    # -------------------------------------------------------------------- steps
    def plan(self, order: Sequence[ScheduledRequest], num_tokens: int) -> LoRABatch | None:
        """Give this step's adapters slots (loading any that are missing into the least
        recently used free ones) and give each row (``order``'s token layout) its slot.
        None when no row uses an adapter. Raises LoRAError when an adapter dropped from CPU
        memory can no longer be read."""
        step_ids = {s.request.lora_request.int_id for s in order if s.request.lora_request}
        if not step_ids:
            return None
        # each request's slot (-1: the base model), then each row's
        per_request = np.full(len(order), -1, dtype=np.int64)
        for i, s in enumerate(order):
            lora = s.request.lora_request
            if lora is not None:
                per_request[i] = self._slot(lora, step_ids)
        counts = np.fromiter((s.num_scheduled_tokens for s in order), np.int64, len(order))
        token_slots = np.repeat(per_request, counts)
        assert len(token_slots) == num_tokens
        used = tuple(int(v) for v in np.unique(per_request[per_request >= 0]))
        whole = used[0] if len(used) == 1 and bool((per_request >= 0).all()) else None
        groups = None if self.kernels is not None or whole is not None else _group(token_slots)
        return LoRABatch(torch.from_numpy(token_slots), used, whole, groups)

    def _slot(self, lora: LoRARequest, step_ids: set[int]) -> int:
        slot = self.table.slot_of(lora.int_id)
        if slot is None:
            held = self.loaded.get(lora.int_id)
            if held is None:  # dropped from CPU memory while it waited
                self.add(lora, step_ids)
                held = self.loaded[lora.int_id]
            slot = self.table.victim(step_ids)
            self.table.write(slot, lora.int_id, held[1])
        self.table.touch(slot)
        return slot

    def bind(self, fused: FusedDecoder | None) -> None:
        """Give the slot tensors of every adapted linear to ``fused`` (the model's fused
        decoder, just bound by the runner on the same kernels), so steps with adapted rows
        stay on the fused path. Call it after every ``bind_fused_decoder``; a fused decoder
        the manager was not given is turned off for such steps instead."""
        self._fused = None
        if fused is None or self.kernels is None:
            return
        linears = {"qkv": "self_attn.qkv_proj", "o": "self_attn.o_proj"}
        linears |= {"gate_up": "mlp.gate_up_proj", "down": "mlp.down_proj"}
        for i, layer in enumerate(self.table.modules):
            for short, name in linears.items():
                m = layer[name]
                fused.set_adapters(i, short, m.lora_a, m.lora_b, m.lora_spans)
        self._fused = fused

    @contextmanager
    def active(self, batch: LoRABatch | None) -> Iterator[None]:
        """Within the block, the model's forward adds the batch's deltas: the fused decode
        path's kernels do when the manager bound it (``bind``), else it is off for the step
        and the adapted linears do. A step without adapted rows changes nothing."""
        if batch is None:
            yield
            return
        fused = self.model.fused
        self.table.state.batch = batch
        try:
            if fused is not None and fused is self._fused:
                fused.adapter_slots = batch.token_slots
                try:
                    yield
                finally:
                    fused.adapter_slots = None
            else:
                self.model.fused = None
                try:
                    yield
                finally:
                    self.model.fused = fused
        finally:
            self.table.state.batch = None


def _group(token_slots: np.ndarray) -> LoRAGroups:
    """The adapted rows of ``token_slots`` [num_tokens] (-1: none) grouped by slot, padded
    to the largest group, for the torch path."""
    rows_of = token_slots >= 0
    lo, hi = int(token_slots[rows_of].min()), int(token_slots.max()) + 1
    counts = np.bincount(token_slots[rows_of] - lo, minlength=hi - lo)
    width = int(counts.max())
    rows = np.zeros((hi - lo, width), dtype=np.int64)
    mask = np.zeros((hi - lo, width), dtype=np.float32)
    for g in np.flatnonzero(counts):  # one per slot of the step, not per request
        found = np.flatnonzero(token_slots == lo + g)
        rows[g, : len(found)] = found
        mask[g, : len(found)] = 1.0
    padded = bool((mask == 0).any())
    return LoRAGroups(
        lo=lo,
        hi=hi,
        width=width,
        rows=torch.from_numpy(rows.reshape(-1)),
        mask=torch.from_numpy(mask).unsqueeze(-1) if padded else None,
    )
