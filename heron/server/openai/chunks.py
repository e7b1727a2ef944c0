"""Small pieces of the OpenAI reply shapes shared by chat and completions."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from heron.outputs import GenerationDelta
from heron.server.common import error_body, sse
from heron.server.openai.protocol import (
    ChatChunkChoice,
    ChatDelta,
    PromptTokensDetails,
    StreamOptions,
    Usage,
)
from heron.server.run import GenerationRun, stream_error


def usage(run: GenerationRun, count_output: bool = True) -> Usage:
    """The run's usage so far; ``count_output`` false reports no completion tokens (an
    echo with ``max_tokens: 0``, whose one engine token is discarded)."""
    completion = run.num_output_tokens if count_output else 0
    return Usage(
        prompt_tokens=run.num_prompt_tokens,
        completion_tokens=completion,
        total_tokens=run.num_prompt_tokens + completion,
        prompt_tokens_details=PromptTokensDetails(cached_tokens=run.num_cached_tokens),
    )


def nothing_to_send(delta: GenerationDelta, top: int | None) -> bool:
    """A delta whose tokens have no text yet (a held partial character or stop string)
    makes a chunk only if it carries logprobs."""
    if delta.text or delta.finish_reason is not None:
        return False
    return top is None or not delta.token_ids


def mid_stream_error(exc: Exception) -> bytes:
    return sse(error_body("openai", stream_error(exc)))


def role_choice(index: int) -> ChatChunkChoice:
    """The first chunk of a streamed choice: the assistant role, no content yet."""
    delta = ChatDelta(role="assistant", content="")
    return ChatChunkChoice(index=index, delta=delta, logprobs=None, finish_reason=None)


def dump_chunk(model: Any) -> dict[str, Any]:
    """A chunk without the optional fields left unset (keeps explicit nulls)."""
    data: dict[str, Any] = model.model_dump(exclude_unset=True)
    return data


@dataclass(frozen=True, slots=True)
class StreamUsage:
    """What a stream says about usage (``stream_options``), when ``include_usage`` is set:
    a last chunk with empty choices and the usage, every other chunk with ``usage: null``;
    with vLLM's ``continuous_usage_stats`` too, every chunk carries the counts so far.
    As in vLLM, ``continuous_usage_stats`` alone changes nothing."""

    continuous: bool = False
    count_output: bool = True

    def so_far(self, run: GenerationRun) -> Usage | None:
        """The usage a chunk that is not the last carries."""
        return usage(run, self.count_output) if self.continuous else None

    def final(self, run: GenerationRun) -> Usage:
        return usage(run, self.count_output)


def stream_usage(options: StreamOptions | None, count_output: bool = True) -> StreamUsage | None:
    """None when the stream reports no usage."""
    if options is None or not options.include_usage:
        return None
    return StreamUsage(bool(options.continuous_usage_stats), count_output)
