"""The one object that crosses from the scheduler to the runner each step."""

from __future__ import annotations

from dataclasses import dataclass, field

from heron.request import Request


@dataclass(slots=True)
class ScheduledRequest:
    """Compute ``num_scheduled_tokens`` tokens of ``request`` from ``num_computed_tokens`` on.

    ``sample`` is true when this chunk reaches the end of the request's known tokens, so the
    runner samples its next token; a prefill chunk in the middle samples nothing.
    ``spec_token_ids`` are speculative drafts computed after the known tokens (counted in
    ``num_scheduled_tokens``, only on a sampling row): the runner verifies them.
    """

    request: Request
    num_computed_tokens: int
    num_scheduled_tokens: int
    block_ids: list[int]
    sample: bool
    spec_token_ids: list[int] = field(default_factory=list)

    @property
    def num_known_tokens(self) -> int:
        """Tokens of ``request.all_token_ids`` computed this step (the drafts excluded)."""
        return self.num_scheduled_tokens - len(self.spec_token_ids)


@dataclass(slots=True)
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    num_scheduled_tokens: int = 0
    preempted_ids: list[str] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled
