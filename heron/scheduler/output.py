"""The one object that crosses from the scheduler to the runner each step."""

from __future__ import annotations

from dataclasses import dataclass, field

from heron.request import Request


@dataclass(slots=True)
class ScheduledRequest:
    """Compute ``num_scheduled_tokens`` tokens of ``request`` from ``num_computed_tokens`` on.

    ``sample`` is true when this chunk reaches the end of the request's known tokens, so the
    runner samples its next token; a prefill chunk in the middle samples nothing.
    """

    request: Request
    num_computed_tokens: int
    num_scheduled_tokens: int
    block_ids: list[int]
    sample: bool


@dataclass(slots=True)
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    num_scheduled_tokens: int = 0
    preempted_ids: list[str] = field(default_factory=list)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled
