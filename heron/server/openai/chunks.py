"""Small pieces of the OpenAI reply shapes shared by chat and completions."""

from __future__ import annotations

from typing import Any

from heron.outputs import GenerationDelta
from heron.server.common import error_body, sse
from heron.server.openai.protocol import ChatChunkChoice, ChatDelta, PromptTokensDetails, Usage
from heron.server.run import GenerationRun, stream_error


def usage(run: GenerationRun) -> Usage:
    completion = run.num_output_tokens
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
