"""The engine core's side of speculative decoding: ask the proposer for drafts before a
step, learn from what was accepted after it, and count for the metrics."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from heron.proposer import adaptive
from heron.proposer.base import Proposer, SpeculativeConfig
from heron.proposer.registry import build_proposer
from heron.request import Request, RequestStatus
from heron.structured.drafts import valid_drafts

if TYPE_CHECKING:
    from heron.config import EngineConfig, ModelConfig
    from heron.scheduler.output import ScheduledRequest


@dataclass(slots=True)
class SpecCounters:
    """Cumulative, for Prometheus (``heron:spec_decode_*``)."""

    num_drafts: int = 0  # verified steps with at least one draft
    num_draft_tokens: int = 0
    num_accepted_tokens: int = 0
    accepted_per_pos: list[int] = field(default_factory=list)  # [k]: accepted at position j


class Speculator:
    """Owns the proposer; called by ``EngineCore.step``."""

    def __init__(
        self,
        config: SpeculativeConfig,
        engine_config: EngineConfig,
        proposer: Proposer | None = None,
        target_config: ModelConfig | None = None,
    ) -> None:
        self.config = config
        self.proposer = proposer or build_proposer(config, engine_config, target_config)
        self.counters = SpecCounters(accepted_per_pos=[0] * config.max_drafts)
        self.num_decoding = 0  # decoding requests at the last ``propose`` (for ``record``)

    def propose(self, running: Sequence[Request]) -> None:
        """Set ``spec_token_ids`` of every running request (empty for those not decoding
        or not speculating this step, see ``adaptive``). Drafts a request's grammar
        refuses are cut off. When the rule gives nobody drafts (past
        ``adaptive.MAX_DECODING`` decoding requests, or every request off) the proposer is
        not called; it catches up with the tokens it missed when it is next asked."""
        for r in running:
            if r.spec_token_ids:  # a prefill chunk's; update_from_output clears the rest
                r.spec_token_ids = []
        decoding = [
            r
            for r in running
            if r.num_computed_tokens == r.num_tokens - 1 and r.status == RequestStatus.RUNNING
        ]
        self.num_decoding = len(decoding)
        cap = adaptive.step_cap(self.config.max_drafts, len(decoding))
        if cap == 0:
            return
        wanted = [(r, adaptive.choose_k(r, cap, len(decoding))) for r in decoding]
        wanted = [(r, k) for r, k in wanted if k > 0]
        if not wanted:
            return
        drafts = self.proposer.propose([r for r, _ in wanted], [k for _, k in wanted])
        for (r, k), d in zip(wanted, drafts, strict=True):
            r.spec_token_ids = valid_drafts(r, list(d[:k]))
            if not d:
                adaptive.proposed_nothing(r, len(decoding))

    def record(self, rows: Sequence[ScheduledRequest], runs: Sequence[list[int]]) -> None:
        """Count one verified step (``runs`` as the runner returned them, before stops) and
        update each request's running acceptance rate."""
        c = self.counters
        for s, run in zip(rows, runs, strict=True):
            k = len(s.spec_token_ids)
            if not k:
                continue
            accepted = len(run) - 1
            c.num_drafts += 1
            c.num_draft_tokens += k
            c.num_accepted_tokens += accepted
            for j in range(min(accepted, len(c.accepted_per_pos))):
                c.accepted_per_pos[j] += 1
            adaptive.record(s.request, k, accepted, self.num_decoding)

    def on_finished(self, requests: Sequence[Request]) -> None:
        """Tell the proposer these requests are done."""
        for r in requests:
            self.proposer.on_finished(r)

    def stats_fields(self) -> dict[str, Any]:
        """The counters as ``EngineStats`` keyword arguments."""
        c = self.counters
        return {
            "spec_num_drafts": c.num_drafts,
            "spec_num_draft_tokens": c.num_draft_tokens,
            "spec_num_accepted_tokens": c.num_accepted_tokens,
            "spec_accepted_per_pos": list(c.accepted_per_pos),
        }
