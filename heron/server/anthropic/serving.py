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

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any, NoReturn

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from pydantic import BaseModel

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
from heron.server.common import APIError, error_body, sse, tokenize, until_disconnected
from heron.server.defaults import (
    context_limit,
    load_model,
    sampling_defaults,
    with_model_messages,
)
from heron.server.model_manager import LoadedModel
from heron.server.protocol import (
    EngineDeadError,
    EngineRequestError,
    GenerationDelta,
    QueueFullError,
)
from heron.server.state import ServerState
from heron.tokenizer import Tokenizer

DEFAULT_TEMPERATURE = 1.0  # Anthropic's default; 0 is greedy
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
BLOCK_SEPARATOR = "\n"  # between the text blocks of one message
TURN_SEPARATOR = "\n\n"  # between consecutive messages of the same role, merged into one turn
_PREFILL_MARK = "<<heron-prefill-end>>"


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


def encode_prompt(tokenizer: Tokenizer, messages: list[dict[str, str]]) -> list[int]:
    """Prompt token ids. A final assistant message is a prefill: the reply continues it, so
    the prompt is the conversation rendered up to the end of that message's text.
    Raises ValueError when the chat template cannot render the conversation."""
    if messages[-1]["role"] != "assistant":
        return tokenizer.encode_chat(messages)
    prefill = messages[-1]["content"]
    if prefill != prefill.rstrip():
        raise ValueError("final assistant content cannot end with trailing whitespace")
    marked = [*messages[:-1], {"role": "assistant", "content": prefill + _PREFILL_MARK}]
    text = tokenizer.apply_chat_template(marked, add_generation_prompt=False)
    end = text.rfind(_PREFILL_MARK)
    if end < 0:
        raise ValueError("this model's chat template cannot continue a final assistant message")
    ids = tokenizer.encode(text[:end], add_special_tokens=False)
    bos = tokenizer.bos_token_id
    if tokenizer.add_bos_token and bos is not None and ids[:1] != [bos]:
        ids.insert(0, bos)  # as encode_chat does
    return ids


async def render(model: LoadedModel, body: CountTokensRequest | MessageCreateRequest) -> list[int]:
    messages = with_model_messages(model.spec, chat_messages(body.system, body.messages))
    try:
        return await tokenize(encode_prompt, messages, model.engine.tokenizer, messages)
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
class MessageRun:
    """One engine request: what it has produced so far, and its metrics."""

    def __init__(
        self, state: ServerState, model: LoadedModel, started: float, num_prompt_tokens: int
    ) -> None:
        self.state = state
        self.model = model
        self.started = started
        self.first_at: float | None = None
        self.last_at = 0.0
        self.itl: list[float] = []
        self.parts: list[str] = []
        self.num_prompt_tokens = num_prompt_tokens
        self.num_cached_tokens = 0
        self.num_output_tokens = 0
        self.finish_reason: str | None = None
        self.stop_string: str | None = None
        self.closed = False

    def record(self, delta: GenerationDelta) -> None:
        if delta.text or delta.token_ids:
            now = time.monotonic()
            if self.first_at is None:
                self.first_at = now
            else:
                self.itl.append(now - self.last_at)
            self.last_at = now
        self.parts.append(delta.text)
        self.num_prompt_tokens = delta.num_prompt_tokens
        self.num_cached_tokens = delta.num_cached_tokens
        self.num_output_tokens = delta.num_output_tokens
        if delta.finish_reason is not None:
            self.finish_reason = delta.finish_reason
            if isinstance(delta.stop_reason, str):
                self.stop_string = delta.stop_reason

    @property
    def text(self) -> str:
        return "".join(self.parts)

    def stop_reason(self, max_tokens: int) -> StopReason | None:
        if self.finish_reason == "stop":
            return "stop_sequence" if self.stop_string is not None else "end_turn"
        if self.finish_reason == "length":
            # The engine cuts max_tokens to what fits the context.
            full = (
                self.num_prompt_tokens + self.num_output_tokens >= self.model.engine.max_model_len
            )
            if full and self.num_output_tokens < max_tokens:
                return "model_context_window_exceeded"
            return "max_tokens"
        return None

    def usage(self) -> Usage:
        return Usage(
            input_tokens=self.num_prompt_tokens - self.num_cached_tokens,
            output_tokens=self.num_output_tokens,
            cache_read_input_tokens=self.num_cached_tokens,
        )

    def close(self, observe: bool = True) -> None:
        """Record the request in the metrics, once."""
        if self.closed:
            return
        self.closed = True
        if observe:
            ttft = None if self.first_at is None else self.first_at - self.started
            self.state.metrics.observe_request(
                self.model.name,
                self.num_prompt_tokens,
                self.num_output_tokens,
                ttft,
                self.itl,
                time.monotonic() - self.started,
                self.finish_reason,
            )


def _fail(run: MessageRun, exc: BaseException) -> NoReturn:
    """Close ``run`` and answer an engine failure before any reply was sent: bad input is a
    400, a failed request a 500; a full queue and a dead engine go to the app's handlers
    (503). A request the engine refused before running it is not counted in the metrics."""
    run.close(observe=not isinstance(exc, ValueError | QueueFullError))
    if isinstance(exc, ValueError):
        raise bad_request(str(exc), "messages") from exc
    if isinstance(exc, EngineRequestError):
        raise APIError(500, str(exc), "server_error") from exc
    raise exc


def _aborted() -> APIError:
    return APIError(500, "the request was aborted before it finished", "server_error")


def _disconnected(run: MessageRun) -> Response:
    """The client went away and its engine request was aborted. Nobody reads this reply."""
    run.finish_reason = run.finish_reason or "abort"
    run.close()
    current = asyncio.current_task()
    if current is not None and current.cancelling():
        raise asyncio.CancelledError  # the handler itself is being cancelled
    return Response(status_code=499)


def _event(event: BaseModel) -> bytes:
    data = event.model_dump()
    return sse(data, event=data["type"])


def _error_event(err: APIError) -> bytes:
    return sse(error_body("anthropic", err), event="error")


async def _first(stream: AsyncIterator[GenerationDelta]) -> GenerationDelta:
    return await anext(stream)


async def _rest(stream: AsyncIterator[GenerationDelta]) -> list[GenerationDelta]:
    return [delta async for delta in stream]


async def _chain(
    first: GenerationDelta, rest: AsyncIterator[GenerationDelta]
) -> AsyncIterator[GenerationDelta]:
    yield first
    async for delta in rest:
        yield delta


class AnthropicServing:
    def __init__(self, state: ServerState) -> None:
        self.state = state

    async def count_tokens(self, body: CountTokensRequest) -> MessageTokensCount:
        model = await get_model(self.state, body.model)
        return MessageTokensCount(input_tokens=len(await render(model, body)))

    async def messages(self, request: Request, body: MessageCreateRequest) -> Response:
        started = time.monotonic()
        state = self.state
        model = await get_model(state, body.model)
        params = sampling_params(state, body, model)
        prompt = await render(model, body)
        check_context(model, len(prompt))

        message_id = f"msg_{uuid.uuid4().hex}"
        run = MessageRun(state, model, started, len(prompt))
        stream = model.engine.generate(prompt, params, request_id=message_id)
        try:
            first = await until_disconnected(request, _first(stream))
        except asyncio.CancelledError:
            await _close(stream)
            return _disconnected(run)
        except StopAsyncIteration:
            _fail(run, EngineRequestError("the engine returned no output"))
        except (ValueError, QueueFullError, EngineRequestError, EngineDeadError) as exc:
            await _close(stream)
            _fail(run, exc)
        run.record(first)

        if body.stream:
            events = self._events(run, message_id, body.max_tokens, first, stream)
            return StreamingResponse(events, media_type="text/event-stream", headers=SSE_HEADERS)

        try:
            if first.finish_reason is None:
                for delta in await until_disconnected(request, _rest(stream)):
                    run.record(delta)
        except asyncio.CancelledError:
            return _disconnected(run)
        except (EngineRequestError, EngineDeadError) as exc:
            _fail(run, exc)
        finally:
            await _close(stream)
        run.close()
        if run.finish_reason == "abort":
            raise _aborted()
        message = Message(
            id=message_id,
            model=body.model,
            content=[TextBlock(text=run.text)],
            stop_reason=run.stop_reason(body.max_tokens),
            stop_sequence=run.stop_string,
            usage=run.usage(),
        )
        return JSONResponse(message.model_dump())

    async def _events(
        self,
        run: MessageRun,
        message_id: str,
        max_tokens: int,
        first: GenerationDelta,
        stream: AsyncIterator[GenerationDelta],
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
        try:
            yield _event(MessageStartEvent(message=start))
            yield _event(ContentBlockStartEvent(index=0, content_block=TextBlock(text="")))
            yield _event(PingEvent())
            async for delta in _chain(first, stream):
                if delta is not first:
                    run.record(delta)
                if delta.text:
                    yield _event(ContentBlockDeltaEvent(index=0, delta=TextDelta(text=delta.text)))
            if run.finish_reason == "abort":
                yield _error_event(_aborted())
                return
            yield _event(ContentBlockStopEvent(index=0))
            yield _event(
                MessageDeltaEvent(
                    delta=MessageDelta(
                        stop_reason=run.stop_reason(max_tokens), stop_sequence=run.stop_string
                    ),
                    usage=MessageDeltaUsage(output_tokens=run.num_output_tokens),
                )
            )
            yield _event(MessageStopEvent())
        except (EngineRequestError, EngineDeadError) as exc:
            yield _error_event(APIError(500, str(exc) or type(exc).__name__, "server_error"))
        finally:
            await _close(stream)
            run.close()


async def _close(stream: AsyncIterator[Any]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()
