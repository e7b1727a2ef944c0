"""Translation between Anthropic's Messages API and the engine.

A request runs as: validate (model, caps, sampling values) -> render the conversation with
the model's chat template (off the event loop) -> check the context length -> submit and wait
for the first output, so that a rejection (bad input, full queue) is still an HTTP error ->
answer with one ``message`` object, or with the stream of events::

    message_start, content_block_start, ping, content_block_delta*, content_block_stop,
    message_delta, message_stop

An engine failure after the stream has begun ends it with ``event: error``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from heron.outputs import GenerationDelta
from heron.prompt import ChatRenderer
from heron.sampling_params import SamplingParams
from heron.server.anthropic.protocol import (
    ContentBlockDeltaEvent,
    ContentBlockStartEvent,
    ContentBlockStopEvent,
    CountTokensRequest,
    Message,
    MessageCreateRequest,
    MessageDelta,
    MessageDeltaEvent,
    MessageDeltaUsage,
    MessageParam,
    MessageStartEvent,
    MessageStopEvent,
    MessageTokensCount,
    PingEvent,
    StopReason,
    TextBlock,
    TextBlockParam,
    TextDelta,
    Usage,
)
from heron.server.common import APIError, error_body, sse, tokenize
from heron.server.defaults import (
    context_limit,
    load_model,
    sampling_defaults,
    with_model_messages,
)
from heron.server.model_spec import LoadedModel
from heron.server.run import STREAM_ERRORS, GenerationRun, stream_error
from heron.server.sampling import engine_fields
from heron.server.state import ServerState

DEFAULT_TEMPERATURE = 1.0  # Anthropic's default; 0 is greedy
BLOCK_SEPARATOR = "\n"  # between the text blocks of one message
TURN_SEPARATOR = "\n\n"  # between consecutive messages of the same role, merged into one turn


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request", param)


# ----------------------------------------------------------------------- validation
async def get_model(state: ServerState, name: str) -> LoadedModel:
    """The loaded model; an unknown name is a 404 (names are never used as paths)."""
    return await load_model(state, name, lambda shown: f"model: {shown!r} is not served here")


def sampling_params(
    state: ServerState, body: MessageCreateRequest, model: LoadedModel
) -> SamplingParams:
    """The request's sampling fields over the model's Modelfile defaults."""
    limits = state.limits
    defaults = sampling_defaults(model.spec)
    if body.max_tokens > limits.max_tokens:
        raise bad_request(
            f"max_tokens: {body.max_tokens} is above this server's limit of {limits.max_tokens}",
            "max_tokens",
        )
    stops = body.stop_sequences or defaults.get("stop") or []
    if len(stops) > limits.max_stop_strings:
        raise bad_request(
            f"stop_sequences: at most {limits.max_stop_strings} are allowed, got {len(stops)}",
            "stop_sequences",
        )
    top_k = body.top_k if body.top_k is not None else defaults.get("top_k", 0)
    if top_k >= model.engine.tokenizer.vocab_size:
        top_k = 0  # keeping every token is the same as no top-k
    try:
        return SamplingParams(
            temperature=defaults.get("temperature", DEFAULT_TEMPERATURE)
            if body.temperature is None
            else body.temperature,
            top_p=defaults.get("top_p", 1.0) if body.top_p is None else body.top_p,
            top_k=top_k,
            min_p=defaults.get("min_p", 0.0),
            repetition_penalty=defaults.get("repetition_penalty", 1.0),
            presence_penalty=defaults.get("presence_penalty", 0.0),
            frequency_penalty=defaults.get("frequency_penalty", 0.0),
            seed=defaults.get("seed"),
            max_tokens=body.max_tokens,
            stop=list(stops),
            **engine_fields(body, model.engine.tokenizer.vocab_size),
        )
    except ValueError as exc:
        raise bad_request(str(exc)) from exc


# ---------------------------------------------------------------------------- prompt
def _text(content: str | Sequence[TextBlockParam]) -> str:
    if isinstance(content, str):
        return content
    return BLOCK_SEPARATOR.join(block.text for block in content)


def chat_messages(
    system: str | Sequence[TextBlockParam] | None, messages: Iterable[MessageParam]
) -> list[dict[str, str]]:
    """The conversation as chat-template messages: the system prompt first, then the turns,
    with consecutive messages of one role merged into one turn as Anthropic does."""
    out: list[dict[str, str]] = []
    if system is not None and (isinstance(system, str) or system):
        out.append({"role": "system", "content": _text(system)})
    for message in messages:
        text = _text(message.content)
        if out and out[-1]["role"] == message.role:
            out[-1]["content"] += TURN_SEPARATOR + text
        else:
            out.append({"role": message.role, "content": text})
    return out


def encode_prompt(renderer: ChatRenderer, messages: list[dict[str, str]]) -> list[int]:
    """Prompt token ids. A final assistant message is a prefill: the reply continues it.
    Raises ValueError when the chat template cannot render the conversation."""
    if messages[-1]["role"] != "assistant":
        return renderer.encode(messages)
    prefill = messages[-1]["content"]
    if prefill != prefill.rstrip():
        raise ValueError("final assistant content cannot end with trailing whitespace")
    return renderer.encode(messages, continue_final_message=True)


async def render(model: LoadedModel, body: CountTokensRequest | MessageCreateRequest) -> list[int]:
    messages = with_model_messages(model.spec, chat_messages(body.system, body.messages))
    try:
        return await tokenize(encode_prompt, messages, model.engine.renderer, messages)
    except ValueError as exc:
        raise bad_request(str(exc), "messages") from exc


def check_context(model: LoadedModel, num_prompt_tokens: int) -> None:
    context = context_limit(model)
    if num_prompt_tokens >= context:
        raise APIError(
            400,
            f"prompt is too long: {num_prompt_tokens} tokens > {context - 1} maximum "
            f"(the context of {context} tokens must also hold at least one output token)",
            "context_length",
            "messages",
        )


# ------------------------------------------------------------------------------ runs
def stop_reason(run: GenerationRun, max_tokens: int) -> StopReason | None:
    choice = run.choices[0]
    if choice.finish_reason == "stop":
        return "stop_sequence" if choice.stop_string is not None else "end_turn"
    if choice.finish_reason == "length":
        # The engine cuts max_tokens to what fits the context.
        full = run.num_prompt_tokens + choice.num_output_tokens >= run.model.engine.max_model_len
        if full and choice.num_output_tokens < max_tokens:
            return "model_context_window_exceeded"
        return "max_tokens"
    return None


def usage(run: GenerationRun) -> Usage:
    return Usage(
        input_tokens=run.num_prompt_tokens - run.num_cached_tokens,
        output_tokens=run.num_output_tokens,
        cache_read_input_tokens=run.num_cached_tokens,
    )


def _aborted() -> APIError:
    return APIError(500, "the request was aborted before it finished", "server_error")


def _event(event: BaseModel) -> bytes:
    data = event.model_dump()
    return sse(data, event=data["type"])


def _error_event(err: APIError) -> bytes:
    return sse(error_body("anthropic", err), event="error")


class AnthropicServing:
    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def count_tokens(self, body: CountTokensRequest) -> MessageTokensCount:
        model = await get_model(self.state, body.model)
        return MessageTokensCount(input_tokens=len(await render(model, body)))

    async def messages(self, request: Request, body: MessageCreateRequest) -> Response:
        started = time.perf_counter_ns()
        state = self.state
        model = await get_model(state, body.model)
        params = sampling_params(state, body, model)
        prompt = await render(model, body)
        check_context(model, len(prompt))

        message_id = f"msg_{uuid.uuid4().hex}"
        run = GenerationRun(state, model, [prompt], params, message_id, started, "messages")
        first = await run.start(request)
        if body.stream:
            events = self._events(run, message_id, body.max_tokens, first)
            return run.respond(events, "text/event-stream")
        await run.collect(request)
        if run.finish_reason == "abort":
            raise _aborted()
        message = Message(
            id=message_id,
            model=body.model,
            content=[TextBlock(text=run.choices[0].output)],
            stop_reason=stop_reason(run, body.max_tokens),
            stop_sequence=run.choices[0].stop_string,
            usage=usage(run),
        )
        return JSONResponse(message.model_dump())

    async def _events(
        self, run: GenerationRun, message_id: str, max_tokens: int, first: list[GenerationDelta]
    ) -> AsyncIterator[bytes]:
        start = Message(
            id=message_id,
            model=run.model.name,
            content=[],
            stop_reason=None,
            stop_sequence=None,
            usage=Usage(
                input_tokens=run.num_prompt_tokens - run.num_cached_tokens,
                output_tokens=0,
                cache_read_input_tokens=run.num_cached_tokens,
            ),
        )
        reason: str | None = None
        try:
            yield _event(MessageStartEvent(message=start))
            yield _event(ContentBlockStartEvent(index=0, content_block=TextBlock(text="")))
            yield _event(PingEvent())
            async for delta in run.stream(first):
                if delta.text:
                    yield _event(ContentBlockDeltaEvent(index=0, delta=TextDelta(text=delta.text)))
            if run.finish_reason == "abort":
                yield _error_event(_aborted())
                return
            yield _event(ContentBlockStopEvent(index=0))
            yield _event(
                MessageDeltaEvent(
                    delta=MessageDelta(
                        stop_reason=stop_reason(run, max_tokens),
                        stop_sequence=run.choices[0].stop_string,
                    ),
                    usage=MessageDeltaUsage(output_tokens=run.num_output_tokens),
                )
            )
            yield _event(MessageStopEvent())
        except STREAM_ERRORS as exc:
            reason = "error"
            yield _error_event(stream_error(exc))
        finally:
            run.close(reason)
