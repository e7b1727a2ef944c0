"""OpenAI's Responses API (``/v1/responses``) on the shared generation run.

A request runs as chat completions do: validate -> resolve ``previous_response_id`` in the
store -> render ``instructions`` and the conversation with the chat template (off the event
loop when long; ``truncation: auto`` drops the oldest turns until the prompt fits) ->
``SamplingParams`` (``text.format`` becomes a structured-outputs constraint) -> one
``GenerationRun`` -> the ``Response`` object, whole or as server-sent events. Stored
responses (``store`` is true unless the request says false) can be retrieved, listed for
their input items, deleted, and continued with ``previous_response_id``.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from functools import partial
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response

from heron.outputs import GenerationDelta
from heron.server.common import APIError, tokenize
from heron.server.defaults import context_limit, load_model, sampling_defaults, with_model_messages
from heron.server.model_spec import LoadedModel
from heron.server.openai.responses_input import (
    bad_request,
    check_request,
    input_messages,
    reasoning_enabled,
    sampling_params,
    structured_outputs,
    tool_plan,
)
from heron.server.openai.responses_output import OutputBuilder, new_id
from heron.server.openai.responses_protocol import (
    DeletedResponse,
    InputItemList,
    OutputMessage,
    OutputReasoning,
    ResponseCreateRequest,
    ResponseObject,
)
from heron.server.openai.responses_store import ResponseStore, StoredResponse
from heron.server.openai.serving import not_found_message
from heron.server.openai.validation import resolve_max_tokens
from heron.server.parsing import Event, TextPart
from heron.server.run import STREAM_ERRORS, GenerationRun, stream_error
from heron.server.state import ServerState
from heron.server.thinking import Thinking, resolve_thinking
from heron.tools import ToolPlan


def _not_stored(response_id: str, param: str | None = None) -> APIError:
    shown = response_id[:80]
    return APIError(404, f"Response with id {shown!r} not found.", "invalid_request", param)


def _as_object(arguments: str) -> dict[str, Any] | str:
    """A call's arguments as the shared message form holds them (an object); the text if
    it is not one (a call cut short by max_output_tokens)."""
    try:
        value = json.loads(arguments)
    except ValueError:
        return arguments
    return value if isinstance(value, dict) else arguments


def _events(run: GenerationRun, delta: GenerationDelta) -> list[Event]:
    """The parsed events a delta brought (its text, when the run has no parser)."""
    if run.choices[delta.index].parser is None:
        return [TextPart(delta.text)] if delta.text else []
    return run.take_events(delta.index)


class ResponsesServing:
    """The Responses API's handlers and its store of responses."""

    def __init__(self, state: ServerState, store: ResponseStore | None = None) -> None:
        self.state = state
        self.store = store or ResponseStore()

    # -------------------------------------------------------------------- create
    async def create(self, request: Request, body: ResponseCreateRequest) -> Response:
        started = time.perf_counter_ns()
        state = self.state
        check_request(state, body)
        previous = self._previous(body.previous_response_id)
        model = await load_model(state, body.model, not_found_message)
        thinking = resolve_thinking(model, reasoning_enabled(body), "reasoning", body.model)
        history = previous.conversation if previous is not None else []
        conversation = history + input_messages(body.input, history)
        defaults = sampling_defaults(model.spec)
        requested = body.max_output_tokens
        if requested is None and "max_tokens" in defaults:
            requested = min(defaults["max_tokens"], state.limits.max_tokens)
        prompt, conversation, plan = await self._prompt(
            model, body, conversation, thinking, requested or 1
        )
        max_tokens = resolve_max_tokens(
            context_limit(model),
            [len(prompt)],
            requested,
            state.limits.max_tokens,
            "input",
            "max_output_tokens",
        )
        fmt = body.text.format if body.text is not None else None
        constraint = structured_outputs(fmt, plan)
        vocab = model.engine.model_config.vocab_size
        params = sampling_params(body, max_tokens, vocab, defaults, constraint)
        response = self._response(body, new_id("resp"))
        # A 400 from the engine (a constraint that does not compile) names the constraint.
        param = None if constraint is None else "text.format"
        if plan is not None and constraint is plan.structured:
            param = "tools"
        parser = thinking.parser_factory(model, prompt, plan.parser if plan else None)
        run = GenerationRun(state, model, [prompt], params, response.id, started, param, parser)
        builder = OutputBuilder(response)
        if body.stream:
            first = await run.start(request)
            events = self._stream(run, first, builder, body, conversation)
            return run.respond(events, "text/event-stream")
        await run.collect(request)
        choice = run.choices[0]
        builder.add(run.take_events(0) if choice.parser else [TextPart(choice.output)])
        builder.finish(run)
        self._keep(body, response, conversation)
        return JSONResponse(response.model_dump())

    def _previous(self, response_id: str | None) -> StoredResponse | None:
        if response_id is None:
            return None
        stored = self.store.get(response_id)
        if stored is None:
            raise _not_stored(response_id, "previous_response_id")
        return stored

    async def _prompt(
        self,
        model: LoadedModel,
        body: ResponseCreateRequest,
        conversation: list[dict[str, Any]],
        thinking: Thinking,
        num_output_tokens: int,
    ) -> tuple[list[int], list[dict[str, Any]], ToolPlan | None]:
        """The prompt's token ids, the conversation it holds and the tool plan: with
        ``truncation: auto``, the oldest turns are dropped (a tool result with its call)
        until the prompt leaves room for ``num_output_tokens``."""
        room = context_limit(model) - num_output_tokens
        system = [{"role": "system", "content": body.instructions}] if body.instructions else []
        renderer = model.engine.renderer
        encode = partial(renderer.encode, **thinking.template_kwargs)
        while True:
            messages = with_model_messages(model.spec, system + conversation)
            plan = tool_plan(body, messages, renderer.template)
            if plan is not None:
                messages = plan.messages
            try:
                prompt = await tokenize(encode, messages, messages, True, plan and plan.tools)
            except ValueError as exc:
                raise bad_request(str(exc), "input") from exc
            if body.truncation != "auto" or len(prompt) <= room or len(conversation) <= 1:
                return prompt, conversation, plan
            conversation = conversation[1:]
            while len(conversation) > 1 and conversation[0]["role"] == "tool":
                conversation = conversation[1:]

    @staticmethod
    def _response(body: ResponseCreateRequest, response_id: str) -> ResponseObject:
        """The response in progress: the request's settings echoed, no output yet."""
        text = body.text.model_dump(by_alias=True, exclude_none=True) if body.text else None
        reasoning = body.reasoning.model_dump() if body.reasoning else None
        tool_choice: Any = body.tool_choice or "auto"
        if not isinstance(tool_choice, str):
            tool_choice = tool_choice.model_dump()
        response = ResponseObject(
            id=response_id,
            created_at=int(time.time()),
            status="in_progress",
            instructions=body.instructions,
            max_output_tokens=body.max_output_tokens,
            model=body.model,
            parallel_tool_calls=body.parallel_tool_calls is not False,
            previous_response_id=body.previous_response_id,
            store=body.store is not False,
            temperature=body.temperature,
            top_p=body.top_p,
            truncation=body.truncation or "disabled",
            user=body.user,
            metadata=body.metadata or {},
            tool_choice=tool_choice,
            tools=[t.model_dump(exclude_none=True) for t in body.tools or []],
        )
        if text and "format" in text:
            response.text = text
        if reasoning:
            response.reasoning = reasoning
        return response

    async def _stream(
        self,
        run: GenerationRun,
        first: list[GenerationDelta],
        builder: OutputBuilder,
        body: ResponseCreateRequest,
        conversation: list[dict[str, Any]],
    ) -> AsyncIterator[bytes]:
        reason: str | None = None
        try:
            yield builder.start()
            async for delta in run.stream(first):
                out = builder.add(_events(run, delta))
                if out:
                    yield out
            yield builder.finish(run)
            self._keep(body, builder.response, conversation)
        except STREAM_ERRORS as exc:
            reason = "error"
            err = stream_error(exc)
            yield builder.fail("server_error", err.message)
        finally:
            run.close(reason)

    def _keep(
        self,
        body: ResponseCreateRequest,
        response: ResponseObject,
        conversation: list[dict[str, Any]],
    ) -> None:
        """Store a finished response (unless ``store`` is false) with the conversation it
        closed, its output appended as the assistant's turn."""
        if body.store is False:
            return
        reply: dict[str, Any] = {"role": "assistant", "content": ""}
        calls = []
        for out in response.output:
            if isinstance(out, OutputMessage):
                reply["content"] += "".join(part.text for part in out.content)
            elif isinstance(out, OutputReasoning):
                reply["reasoning_content"] = out.content[0].text
            else:
                function = {"name": out.name, "arguments": _as_object(out.arguments)}
                calls.append({"id": out.call_id, "type": "function", "function": function})
        if calls:
            reply["tool_calls"] = calls
        items: list[dict[str, Any]] = (
            [{"type": "message", "role": "user", "content": body.input}]
            if isinstance(body.input, str)
            else [item.model_dump(exclude_none=True) for item in body.input]
        )
        for item in items:
            item.setdefault("id", new_id("msg" if item["type"] == "message" else "item"))
            if isinstance(item.get("content"), str):
                item["content"] = [{"type": "input_text", "text": item["content"]}]
        self.store.put(StoredResponse(response, [*conversation, reply], items))

    # --------------------------------------------------------------- retrieval
    def retrieve(self, response_id: str) -> ResponseObject:
        stored = self.store.get(response_id)
        if stored is None:
            raise _not_stored(response_id)
        return stored.response

    def delete(self, response_id: str) -> DeletedResponse:
        if not self.store.delete(response_id):
            raise _not_stored(response_id)
        return DeletedResponse(id=response_id)

    def input_items(self, response_id: str, order: str = "desc") -> InputItemList:
        """The stored request's input items, newest first unless ``order`` is asc."""
        stored = self.store.get(response_id)
        if stored is None:
            raise _not_stored(response_id)
        data = stored.input_items if order == "asc" else stored.input_items[::-1]
        first = data[0]["id"] if data else None
        last = data[-1]["id"] if data else None
        return InputItemList(data=data, first_id=first, last_id=last)
