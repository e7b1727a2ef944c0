"""Request state shared by the scheduler, the KV cache manager and the engine.

The one invariant: a request has ``num_computed_tokens`` (whose KV is in the cache) and
``num_tokens`` (prompt plus generated). Each step the scheduler tops ``num_computed_tokens`` up
towards ``num_tokens`` within a token budget; prefill, chunked prefill, prefix hits and
recompute after preemption are all that one rule.
"""

from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field
from typing import Any

import torch

from heron.lora.request import LoRARequest
from heron.sampling_params import SamplingParams


class RequestStatus(enum.IntEnum):
    WAITING = 0
    RUNNING = 1
    PREEMPTED = 2
    FINISHED_STOPPED = 3
    FINISHED_LENGTH = 4
    FINISHED_ABORTED = 5

    @property
    def finished(self) -> bool:
        return self >= RequestStatus.FINISHED_STOPPED


FINISH_REASONS = {
    RequestStatus.FINISHED_STOPPED: "stop",
    RequestStatus.FINISHED_LENGTH: "length",
    RequestStatus.FINISHED_ABORTED: "abort",
}


@dataclass(slots=True, eq=False)
class Request:
    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_ids: frozenset[int] = frozenset()
    max_tokens: int = 16  # resolved against the context length by the engine
    priority: int = 0
    arrival_time: float = field(default_factory=time.monotonic)
    # A sibling of an n > 1 group whose prompt KV it may share once this request is prefilled.
    fork_parent: Request | None = None
    cache_salt: bytes | None = None
    lora_request: LoRARequest | None = None  # the adapter it runs with; None: the base model

    status: RequestStatus = RequestStatus.WAITING
    output_token_ids: list[int] = field(default_factory=list)
    all_token_ids: list[int] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache at admission
    num_preemptions: int = 0
    stop_reason: int | None = None  # the stop token id that ended it
    generator: torch.Generator | None = None
    # The llguidance matcher of a constrained request (structured outputs), set by the
    # engine core once its grammar is compiled; None for unconstrained requests.
    grammar: Any = None
    # Prompt positions whose logprobs the engine core has collected (prompt_logprobs): the
    # runner scores only positions from here on, so a recompute never scores one twice.
    num_prompt_logprobs: int = 0
    # Speculative decoding: this step's proposed next tokens (tokens to compute after
    # ``all_token_ids``, verified by the runner; never part of ``all_token_ids``), and the
    # adaptive rule's memory (heron/proposer/adaptive.py).
    spec_token_ids: list[int] = field(default_factory=list)
    # estimated chance that each next draft is accepted (spec_accepted over accepted plus
    # rejections), from running averages per verified step of drafts accepted and of
    # rejections (0 or 1: the step ended at a rejected draft); the prior is 2/3 and light,
    # so a new request starts with one draft, earns more, and stops after one rejection
    spec_acceptance: float = 2.0 / 3.0
    spec_accepted: float = 0.5
    spec_rejected: float = 0.25
    spec_idle_steps: int = 0  # decode steps since speculation was turned off for it
    spec_probe_wait: int = 8  # idle decode steps before a probe (adaptive.PROBE_EVERY..32)

    def __post_init__(self) -> None:
        if not self.prompt_token_ids:
            raise ValueError("the prompt must contain at least one token")
        self.all_token_ids = list(self.prompt_token_ids)
        if self.sampling_params.seed is not None:
            self.generator = torch.Generator().manual_seed(self.sampling_params.seed)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    @property
    def needs_prompt_logprobs(self) -> bool:
        """Prompt positions are still to be scored: the request must compute every prompt
        position (no prefix-cache hit)."""
        wanted = self.sampling_params.prompt_logprobs is not None
        return wanted and self.num_prompt_logprobs < self.num_prompt_tokens - 1

    @property
    def is_finished(self) -> bool:
        return self.status.finished

    def append_output_token(self, token_id: int) -> None:
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)
