"""Translation between Anthropic's Messages API and the engine.

A request runs as: validate (model, caps, sampling values) -> render the conversation with
the model's chat template (off the event loop) -> check the context length -> submit and wait
for the first output, so that a rejection (bad input, full queue) is still an HTTP error ->
answer with one ``message`` object, or with the stream of events::

    message_start, content_block_start, ping, content_block_delta*, content_block_stop,
    message_delta, message_stop

A thinking model's reply (``thinking``: see heron/server/thinking.py; unset leaves the
model's default) starts with a thinking block, so its blocks open as the text arrives
(``blocks.py``). ``budget_tokens`` is checked as Anthropic checks it but bounds nothing
beyond ``max_tokens``. A final assistant message (a prefill) cannot be combined with thinking.

An engine failure after the stream has begun ends it with ``event: error``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator, Iterable, Sequence
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel

from heron.outputs import GenerationDelta
from heron.prompt import ChatRenderer
from heron.sampling_params import SamplingParams
from heron.server.anthropic.blocks import BlockStream, reply_blocks
from heron.server.anthropic.protocol import (
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
    TextBlockParam,
    ThinkingBlockParam,
    Usage,
)
from heron.server.anthropic.tools import run_constraint, tool_blocks, tool_plan
from heron.server.common import APIError, error_body, sse, tokenize
from heron.server.defaults import (
    context_limit,
    load_model,
    sampling_defaults,
    with_model_messages,
)
from heron.server.model_spec import LoadedModel
from heron.server.parsing import Event, TextPart
from heron.server.run import STREAM_ERRORS, GenerationRun, stream_error
from heron.server.sampling import engine_fields
from heron.server.state import ServerState
from heron.server.thinking import Thinking, resolve_thinking
from heron.structured import StructuredOutputsParams
from heron.tools import ToolPlan

DEFAULT_TEMPERATURE = 1.0  # Anthropic's default; 0 is greedy
BLOCK_SEPARATOR = "\n"  # between the text blocks of one message
TURN_SEPARATOR = "\n\n"  # between consecutive messages of the same role, merged into one turn


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request", param)


# ----------------------------------------------------------------------- validation
def output_constraint(body: MessageCreateRequest) -> StructuredOutputsParams | None:
    """``output_config.format`` (a JSON schema the reply's text must match), or None.
    Whether the schema compiles is checked by the engine client (a 400 naming the field)."""
    config = body.output_config
    if config is None:
        return None
    if config.effort is not None:
        raise bad_request("output_config.effort is not supported", "output_config.effort")
    if config.format is None:
        return None
    try:
        return StructuredOutputsParams(json=config.format.schema_)
    except ValueError as exc:
        raise bad_request(f"output_config.format: {exc}", "output_config.format") from exc


def resolve_body_thinking(
    model: LoadedModel, body: CountTokensRequest | MessageCreateRequest
) -> Thinking:
    """``thinking`` as the request's choice. Raises APIError 400 for a budget that does not
    leave room for the answer, or thinking asked of a model that cannot."""
    config = body.thinking
    if config is None:
        return resolve_thinking(model, None, "thinking")
    max_tokens = body.max_tokens if isinstance(body, MessageCreateRequest) else None
    if config.type == "enabled" and max_tokens and config.budget_tokens >= max_tokens:
        raise bad_request(
            "max_tokens must be greater than thinking.budget_tokens", "thinking.budget_tokens"
        )
    return resolve_thinking(model, config.type != "disabled", "thinking", body.model)


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
            structured_outputs=output_constraint(body),
            **engine_fields(body, model.engine.tokenizer.vocab_size),
        )
    except ValueError as exc:
        raise bad_request(str(exc)) from exc


# ---------------------------------------------------------------------------- prompt
def _text(content: str | Sequence[BaseModel]) -> str:
    if isinstance(content, str):
        return content
    return BLOCK_SEPARATOR.join(b.text for b in content if isinstance(b, TextBlockParam))


def _thinking(content: str | Sequence[BaseModel]) -> str:
    if isinstance(content, str):
        return ""
    return BLOCK_SEPARATOR.join(b.thinking for b in content if isinstance(b, ThinkingBlockParam))


def chat_messages(
    system: str | Sequence[TextBlockParam] | None, messages: Iterable[MessageParam]
) -> list[dict[str, Any]]:
    """The conversation as chat-template messages: the system prompt first, then the turns,
    with consecutive messages of one role merged into one turn as Anthropic does. An
    assistant's thinking blocks become its ``reasoning_content`` (templates that keep the
    reasoning of earlier turns read it); elsewhere they are a 400. Tool blocks take the
    shared form (``tools.tool_blocks``): a user's results become tool messages before its
    text, an assistant's calls its ``tool_calls``."""
    out: list[dict[str, Any]] = []
    if system is not None and (isinstance(system, str) or system):
        out.append({"role": "system", "content": _text(system)})
    call_names: dict[str, str] = {}
    for i, message in enumerate(messages):
        text, thought = _text(message.content), _thinking(message.content)
        if thought and message.role != "assistant":
            raise bad_request("thinking blocks belong in assistant messages", f"messages.{i}")
        results, calls = tool_blocks(message, f"messages.{i}", call_names)
        out += results
        if results and not text:
            continue  # the message held only tool results
        if out and out[-1]["role"] == message.role and not results:
            out[-1]["content"] += TURN_SEPARATOR + text
        else:
            out.append({"role": message.role, "content": text})
        if calls:
            out[-1]["tool_calls"] = out[-1].get("tool_calls", []) + calls
        if thought:
            before = out[-1].get("reasoning_content")
            out[-1]["reasoning_content"] = thought if not before else before + "\n" + thought
    return out


def encode_prompt(
    renderer: ChatRenderer,
    messages: list[dict[str, Any]],
    thinking: Thinking | None = None,
    tools: list[dict[str, Any]] | None = None,
) -> list[int]:
    """Prompt token ids. A final assistant message is a prefill: the reply continues it.
    Raises ValueError when the chat template cannot render the conversation."""
    kwargs: dict[str, Any] = dict(thinking.template_kwargs) if thinking is not None else {}
    kwargs["tools"] = tools
    if messages[-1]["role"] != "assistant":
        return renderer.encode(messages, **kwargs)
    prefill = messages[-1]["content"]
    if prefill != prefill.rstrip():
        raise ValueError("final assistant content cannot end with trailing whitespace")
    if thinking is not None and thinking.enabled:
        raise ValueError("thinking cannot be combined with a final assistant message (prefill)")
    return renderer.encode(messages, continue_final_message=True, **kwargs)


async def render(
    model: LoadedModel,
    body: CountTokensRequest | MessageCreateRequest,
    thinking: Thinking | None = None,
) -> tuple[list[int], ToolPlan | None]:
    """The prompt's token ids and the request's tool plan (None without tools)."""
    messages = with_model_messages(model.spec, chat_messages(body.system, body.messages))
    renderer = model.engine.renderer
    plan = tool_plan(body, messages, renderer.template)
    if plan is not None:
        messages = plan.messages
    tools = plan.tools if plan is not None else None
    try:
        ids = await tokenize(encode_prompt, messages, renderer, messages, thinking, tools)
    except ValueError as exc:
        raise bad_request(str(exc), "messages") from exc
    return ids, plan


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
    if choice.finish_reason == "tool_calls":
        return "tool_use"
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
        ids, _ = await render(model, body, resolve_body_thinking(model, body))
        return MessageTokensCount(input_tokens=len(ids))

    async def messages(self, request: Request, body: MessageCreateRequest) -> Response:
        started = time.perf_counter_ns()
        state = self.state
        model = await get_model(state, body.model)
        params = sampling_params(state, body, model)
        thinking = resolve_body_thinking(model, body)
        prompt, tools = await render(model, body, thinking)
        check_context(model, len(prompt))
        prefill = body.messages[-1].role == "assistant"  # the reply continues it: no parsing
        if prefill:
            tools = None
        calls = tools.parser if tools is not None else None
        parser = None if prefill else thinking.parser_factory(model, prompt, calls)

        message_id = f"msg_{uuid.uuid4().hex}"
        # A 400 from the engine names the schema when there is one (it did not compile).
        param = "messages" if params.structured_outputs is None else "output_config.format"
        params.structured_outputs = run_constraint(tools, params.structured_outputs)
        if tools is not None and params.structured_outputs is tools.structured:
            param = "tools"
        run = GenerationRun(state, model, [prompt], params, message_id, started, param, parser)
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
            content=reply_blocks(run.choices[0]),
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
            parsed = run.choices[0].parser is not None
            blocks = BlockStream(run.choices[0])
            for block_event in [] if parsed else blocks.open_text():
                yield _event(block_event)
            yield _event(PingEvent())
            async for delta in run.stream(first):
                parts: list[Event] = run.take_events(0) if parsed else [TextPart(delta.text)]
                for block_event in blocks.feed(parts):
                    yield _event(block_event)
            if run.finish_reason == "abort":
                yield _error_event(_aborted())
                return
            for block_event in blocks.finish():
                yield _event(block_event)
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
