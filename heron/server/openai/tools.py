"""OpenAI chat's tool calling, translated: ``tools``/``tool_choice``/``parallel_tool_calls``
into a ``ToolPlan`` (heron/tools), tool history into the shared message form, and the run's
parsed calls into ``message.tool_calls`` and streamed ``delta.tool_calls``.

Call ids are ``call_<random>``, given when a call's first piece is seen (and kept on the
run's choice, so a streamed call and the whole one agree).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from heron.outputs import GenerationDelta
from heron.sampling_params import SamplingParams
from heron.server.common import APIError
from heron.server.openai.protocol import ChatCompletionRequest, ChatDelta, ChatMessage
from heron.server.openai.tool_protocol import (
    CalledFunction,
    FunctionDelta,
    NamedToolChoice,
    ToolCallDelta,
    ToolCallOut,
)
from heron.server.parsing import Event, TextPart, ToolCall
from heron.server.run import Choice, GenerationRun
from heron.tools import ToolChoice, ToolPlan, ToolSpec, plan_tools
from heron.tools.plan import with_constraint
from heron.tools.spec import EMPTY_PARAMETERS


def _bad(message: str, param: str) -> APIError:
    return APIError(400, message, "invalid_request", param)


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def tool_message(m: ChatMessage, where: str, names: dict[str, str]) -> dict[str, Any] | None:
    """The tool-calling part of message ``m`` (at ``where``) in the shared form: an
    assistant's ``tool_calls`` with arguments as objects, a tool result's ``tool_call_id``
    and its tool's ``name`` (from ``names``, the ids of earlier calls; mutated with this
    message's calls). None for an ordinary message. Raises a 400 for a malformed one."""
    if m.role == "function":
        raise _bad("function messages are not supported; use tool messages", where)
    if m.tool_calls is not None and m.role != "assistant":
        raise _bad("only assistant messages have tool_calls", f"{where}.tool_calls")
    if m.tool_call_id is not None and m.role != "tool":
        raise _bad("only tool messages have a tool_call_id", f"{where}.tool_call_id")
    if m.role == "tool":
        if not m.tool_call_id:
            raise _bad("a tool message needs the tool_call_id it answers", f"{where}.tool_call_id")
        if m.tool_call_id not in names:
            raise _bad(
                "a tool message must answer a tool call of an earlier assistant message",
                f"{where}.tool_call_id",
            )
        return {"role": "tool", "tool_call_id": m.tool_call_id, "name": names[m.tool_call_id]}
    if not m.tool_calls:
        if m.tool_calls is not None:
            raise _bad("tool_calls must not be empty", f"{where}.tool_calls")
        return None
    calls = []
    for j, call in enumerate(m.tool_calls):
        try:
            arguments = json.loads(call.function.arguments or "{}")
        except ValueError:
            arguments = None
        if not isinstance(arguments, dict):
            raise _bad(
                "tool call arguments must be a JSON object in text",
                f"{where}.tool_calls.{j}.function.arguments",
            )
        names[call.id] = call.function.name
        function = {"name": call.function.name, "arguments": arguments}
        calls.append({"id": call.id, "type": "function", "function": function})
    return {"role": "assistant", "tool_calls": calls}


def _choice(body: ChatCompletionRequest) -> ToolChoice:
    choice = body.tool_choice
    if isinstance(choice, NamedToolChoice):
        return ToolChoice("named", choice.function.name)
    if choice is None:
        return ToolChoice("auto" if body.tools else "none")
    return ToolChoice(choice)


def chat_tool_plan(
    body: ChatCompletionRequest, messages: list[dict[str, Any]], template: str | None
) -> ToolPlan | None:
    """The request's tool plan, or None when it neither offers tools nor has tool history
    (then nothing changes). A constraint of its own (``response_format``, ...) cannot
    be combined with a forced call. Raises a 400 for bad tools."""
    history = any(m["role"] == "tool" or m.get("tool_calls") for m in messages)
    if not body.tools and not history:
        if body.tool_choice not in (None, "none", "auto"):
            raise _bad("tool_choice needs tools", "tool_choice")
        return None
    specs = [
        ToolSpec(
            t.function.name,
            t.function.description,
            EMPTY_PARAMETERS if t.function.parameters is None else t.function.parameters,
        )
        for t in body.tools or []
    ]
    choice = _choice(body)
    try:
        plan = plan_tools(messages, specs, choice, body.parallel_tool_calls is not False, template)
    except ValueError as exc:
        param = "tool_choice" if "tool_choice" in str(exc) else "tools"
        raise _bad(str(exc), param) from None
    return plan


def merge_constraint(plan: ToolPlan | None, params: SamplingParams) -> None:
    """Put the plan's call grammar on ``params`` (mutated; see ``with_constraint``)."""
    try:
        params.structured_outputs = with_constraint(plan, params.structured_outputs)
    except ValueError as exc:
        raise _bad(str(exc), "tool_choice") from None


def message_tool_calls(choice: Choice) -> list[ToolCallOut] | None:
    """A finished choice's calls for ``message.tool_calls`` (None without calls)."""
    if not choice.tool_calls:
        return None
    return [
        ToolCallOut(id=_id(call), function=CalledFunction(name=call.name, arguments=call.arguments))
        for call in choice.tool_calls
    ]


def _id(call: ToolCall) -> str:
    if call.id is None:
        call.id = new_call_id()
    return call.id


def delta_parts(choice: Choice, events: list[Event]) -> tuple[str, str, list[ToolCallDelta]]:
    """The content, reasoning and tool-call pieces that ``events`` (of ``choice``) stream."""
    content: list[str] = []
    reasoning: list[str] = []
    calls: list[ToolCallDelta] = []
    for event in events:
        if isinstance(event, TextPart):
            (content if event.kind == "content" else reasoning).append(event.text)
        elif event.name is not None:
            call_id = _id(choice.tool_calls[event.index])
            function = FunctionDelta(name=event.name, arguments=event.arguments)
            calls.append(
                ToolCallDelta(index=event.index, id=call_id, type="function", function=function)
            )
        elif event.arguments:
            calls.append(
                ToolCallDelta(index=event.index, function=FunctionDelta(arguments=event.arguments))
            )
    return "".join(content), "".join(reasoning), calls


def chat_delta(run: GenerationRun, delta: GenerationDelta) -> ChatDelta | None:
    """The streamed delta for ``delta``: its text, or with a parser its parsed content and
    call pieces. None when a parser holds everything back (nothing to send yet)."""
    choice = run.choices[delta.index]
    if choice.parser is None:
        return ChatDelta(content=delta.text) if delta.text else ChatDelta()
    content, reasoning, calls = delta_parts(choice, run.take_events(delta.index))
    fields: dict[str, Any] = {}
    if content:
        fields["content"] = content
    if reasoning:
        fields["reasoning_content"] = reasoning
    if calls:
        fields["tool_calls"] = calls
    return ChatDelta(**fields) if fields else None
