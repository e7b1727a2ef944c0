"""Ollama's tool calling on ``/api/chat``, translated: ``tools`` into a ``ToolPlan``
(heron/tools; Ollama has no tool_choice, so the model may call: auto), history messages'
``tool_calls`` and ``tool`` results into the shared message form, and the run's calls
into ``message.tool_calls`` (``{"function": {"name", "arguments": {...}}}``, whole)."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from heron.server.common import APIError
from heron.server.run import Choice
from heron.structured import StructuredOutputsParams
from heron.tools import ToolChoice, ToolPlan, ToolSpec, plan_tools
from heron.tools.plan import with_constraint
from heron.tools.spec import EMPTY_PARAMETERS


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class ToolFunction(_Strict):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class Tool(_Strict):
    type: Literal["function"] = "function"
    function: ToolFunction


class CallFunction(_Strict):
    name: str
    arguments: dict[str, Any] | None = None
    index: int | None = None


class ToolCallParam(_Strict):
    id: str | None = None
    type: Literal["function"] | None = None
    function: CallFunction


def _bad(message: str, param: str) -> APIError:
    return APIError(400, f"{message} ({param})", param=param)


def _validated(model: type[BaseModel], value: Any, param: str) -> Any:
    try:
        return model.model_validate(value)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise _bad(first["msg"], f"{param}.{where}" if where else param) from None


def history_calls(raw: list[dict[str, Any]], where: str) -> list[dict[str, Any]]:
    """An assistant message's ``tool_calls`` in the shared form (ids given where the
    client sent none). Raises a 400 naming the bad call."""
    calls = []
    for j, value in enumerate(raw):
        call: ToolCallParam = _validated(ToolCallParam, value, f"{where}.tool_calls.{j}")
        function = {"name": call.function.name, "arguments": call.function.arguments or {}}
        call_id = call.id or f"call_{uuid.uuid4().hex[:24]}"
        calls.append({"id": call_id, "type": "function", "function": function})
    return calls


def chat_tool_plan(
    raw_tools: list[dict[str, Any]] | None, messages: list[dict[str, Any]], template: str | None
) -> ToolPlan | None:
    """The request's tool plan, or None when it neither offers tools nor has tool history.
    Raises a 400 naming ``tools``."""
    history = any(m["role"] == "tool" or m.get("tool_calls") for m in messages)
    if not raw_tools and not history:
        return None
    specs = []
    for i, value in enumerate(raw_tools or []):
        tool: Tool = _validated(Tool, value, f"tools.{i}")
        parameters = tool.function.parameters
        specs.append(
            ToolSpec(
                tool.function.name,
                tool.function.description,
                EMPTY_PARAMETERS if parameters is None else parameters,
            )
        )
    choice = ToolChoice("auto" if specs else "none")
    try:
        return plan_tools(messages, specs, choice, True, template)
    except ValueError as exc:
        raise _bad(str(exc), "tools") from None


def reply_tool_calls(choice: Choice) -> list[dict[str, Any]] | None:
    """A finished choice's calls in Ollama's shape (arguments an object; a call cut short
    gets the empty one), or None without calls."""
    if not choice.tool_calls:
        return None
    return [
        {"function": {"name": call.name, "arguments": call.arguments_object()}}
        for call in choice.tool_calls
    ]


def with_tool_calls(
    plan: ToolPlan, own: StructuredOutputsParams | None
) -> StructuredOutputsParams | None:
    """The run's constraint: the request's ``format`` wins over the call grammar (calls are
    then parsed, not enforced); Ollama never forces a call, so the two never conflict."""
    return with_constraint(plan, own)
