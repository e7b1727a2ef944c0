"""What the front ends hand back: ``RequestOutput`` (cumulative, in vLLM's shape) for
``LLM.generate`` and ``LLMEngine.step``, and ``GenerationDelta`` (only what is new) for the
server's streams. Both are built by the ``OutputProcessor`` from the engine core's token ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class Logprob:
    """The log-probability of one token, with its rank in the distribution (1 = most likely)."""

    logprob: float
    rank: int
    decoded_token: str | None = None


@dataclass(slots=True)
class CompletionOutput:
    index: int
    text: str
    token_ids: list[int]
    finish_reason: str | None = None  # "stop", "length", "abort" or None while running
    stop_reason: int | str | None = None  # the stop string or stop token id that ended it
    logprobs: list[dict[int, Logprob]] | None = None

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None


# vLLM's shape: None for the first prompt token (nothing before it), then per token its own
# logprob and the top alternatives, keyed by token id.
PromptLogprobs = list[dict[int, Logprob] | None]


@dataclass(slots=True)
class RequestOutput:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    outputs: list[CompletionOutput] = field(default_factory=list)
    finished: bool = False
    num_cached_tokens: int = 0
    prompt_logprobs: PromptLogprobs | None = None  # when SamplingParams.prompt_logprobs is set


@dataclass(slots=True)
class GenerationDelta:
    """New output of one choice since the previous delta of the same request."""

    request_id: str
    index: int  # choice index, 0..n-1
    text: str  # new text (never splits a UTF-8 character; holds back a forming stop string)
    token_ids: list[int]  # new token ids
    logprobs: list[dict[int, Logprob]] | None  # one entry per new token when asked for
    finish_reason: str | None  # "stop", "length", "abort", or None while running
    stop_reason: int | str | None
    num_prompt_tokens: int
    num_cached_tokens: int
    num_output_tokens: int  # cumulative for this choice
    # once per request, on choice 0's first delta, when SamplingParams.prompt_logprobs is set
    prompt_logprobs: PromptLogprobs | None = None
