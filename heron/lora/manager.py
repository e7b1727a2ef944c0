"""``LoRAManager``: the engine's adapters. Loads and validates them (``add``), keeps up to
``max_cpu_loras`` in CPU memory (least recently used dropped first, never one a live request
names), gives each step's adapters a slot and groups the step's rows by slot (``plan``),
and makes the step's forward use them (``active``)."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import torch

from heron.config import LoRAConfig, ModelConfig
from heron.lora.layer import LoRABatch
from heron.lora.loader import load_adapter
from heron.lora.request import LoRARequest
from heron.lora.slots import SlotTable
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
    def __init__(self, model: CausalLM, model_config: ModelConfig, config: LoRAConfig) -> None:
        self.model = model
        self.model_config = model_config
        self.config = config
        # The deltas are computed in float64 (cast to the model's dtype once added): a BLAS
        # float32 product's summation order depends on the thread count, and a quantized
        # base's per-row activation rounding turns that 1e-7 into visible logit changes.
        # In float64 the order's effect is far below float32's rounding, so a request's
        # output does not depend on the threads (nor on which process runs it).
        self.table = SlotTable(
            model, model_config, config.max_loras, config.max_lora_rank, torch.float64
        )
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
        recently used free ones) and group the rows (``order``'s token layout) by slot.
        None when no row uses an adapter. Raises LoRAError when an adapter dropped from CPU
        memory can no longer be read."""
        step_ids = {s.request.lora_request.int_id for s in order if s.request.lora_request}
        if not step_ids:
            return None
        spans: list[tuple[int, int, int]] = []  # (slot, first row, rows)
        offset = 0
        for s in order:
            lora = s.request.lora_request
            if lora is not None:
                spans.append((self._slot(lora, step_ids), offset, s.num_scheduled_tokens))
            offset += s.num_scheduled_tokens
        return _group(spans, num_tokens)

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

    @contextmanager
    def active(self, batch: LoRABatch | None) -> Iterator[None]:
        """Within the block, the model's forward adds the batch's deltas. The fused decode
        path (one kernel call for every layer) has no place for them, so it is off for
        such steps; a step without adapted rows changes nothing."""
        if batch is None:
            yield
            return
        fused, self.model.fused = self.model.fused, None
        self.table.state.batch = batch
        try:
            yield
        finally:
            self.model.fused = fused
            self.table.state.batch = None


def _group(spans: list[tuple[int, int, int]], num_tokens: int) -> LoRABatch:
    """The batch of ``spans`` (slot, first row, rows) in a step of ``num_tokens`` rows."""
    slots = {slot for slot, _, _ in spans}
    if len(slots) == 1 and sum(n for _, _, n in spans) == num_tokens:
        return LoRABatch(whole=spans[0][0])
    lo, hi = min(slots), max(slots) + 1
    counts = np.zeros(hi - lo, dtype=np.int64)
    for slot, _, n in spans:
        counts[slot - lo] += n
    width = int(counts.max())
    rows = np.zeros((hi - lo, width), dtype=np.int64)
    mask = np.zeros((hi - lo, width), dtype=np.float32)
    fill = np.zeros(hi - lo, dtype=np.int64)
    for slot, start, n in spans:
        g, at = slot - lo, fill[slot - lo]
        rows[g, at : at + n] = np.arange(start, start + n)
        mask[g, at : at + n] = 1.0
        fill[g] += n
    padded = bool((mask == 0).any())
    return LoRABatch(
        whole=None,
        lo=lo,
        hi=hi,
        width=width,
        rows=torch.from_numpy(rows.reshape(-1)),
        mask=torch.from_numpy(mask).unsqueeze(-1) if padded else None,
    )
