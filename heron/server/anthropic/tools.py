"""Anthropic's tool use, translated: ``tools``/``tool_choice`` into a ``ToolPlan``
(heron/tools), ``tool_use`` and ``tool_result`` history blocks into the shared message
form, and the run's parsed calls into ``tool_use`` blocks (ids ``toolu_<random>``, given
when a call's first piece is seen and kept on the run's choice)."""

from __future__ import annotations

import uuid
from typing import Any

from heron.server.anthropic.protocol import (
    CountTokensRequest,
    MessageCreateRequest,
    MessageParam,
    TextBlockParam,
    ToolResultBlockParam,
    ToolUseBlock,
    ToolUseBlockParam,
)
from heron.server.common import APIError
from heron.server.parsing import ToolCall
from heron.server.run import Choice
from heron.structured import StructuredOutputsParams
from heron.tools import ToolChoice, ToolPlan, ToolSpec, plan_tools
from heron.tools.plan import with_constraint


def _bad(message: str, param: str) -> APIError:
    return APIError(400, message, "invalid_request", param)


def call_id(call: ToolCall) -> str:
    """The call's id, given on first use (mutates ``call``)."""
    if call.id is None:
        call.id = f"toolu_{uuid.uuid4().hex[:24]}"
    return call.id


def tool_blocks(
    message: MessageParam, where: str, names: dict[str, str]
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``message``'s tool results (as ``tool`` messages, to go before its text) and its
    calls (for the assistant message's ``tool_calls``), in the shared form. ``names`` maps
    the ids of earlier calls to their tools (mutated with this message's calls). Raises a
    400 for a block in the wrong role or a result that answers no call."""
    results: list[dict[str, Any]] = []
    calls: list[dict[str, Any]] = []
    if isinstance(message.content, str):
        return results, calls
    for j, block in enumerate(message.content):
        if isinstance(block, ToolUseBlockParam):
            if message.role != "assistant":
                raise _bad("tool_use blocks belong in assistant messages", f"{where}.content.{j}")
            names[block.id] = block.name
            function = {"name": block.name, "arguments": block.input}
            calls.append({"id": block.id, "type": "function", "function": function})
        elif isinstance(block, ToolResultBlockParam):
            if message.role != "user":
                raise _bad("tool_result blocks belong in user messages", f"{where}.content.{j}")
            if block.tool_use_id not in names:
                raise _bad(
                    f"tool_result {block.tool_use_id[:64]!r} answers no earlier tool_use block",
                    f"{where}.content.{j}.tool_use_id",
                )
            text = _result_text(block.content)
            if block.is_error:
                text = f"Error: {text}"
            results.append(
                {
                    "role": "tool",
                    "tool_call_id": block.tool_use_id,
                    "name": names[block.tool_use_id],
                    "content": text,
                }
            )
    return results, calls


def _result_text(content: str | list[TextBlockParam] | None) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    return "\n".join(b.text for b in content)


def tool_plan(
    body: CountTokensRequest | MessageCreateRequest,
    messages: list[dict[str, Any]],
    template: str | None,
) -> ToolPlan | None:
    """The request's tool plan, or None when it neither offers tools nor has tool history.
    Raises a 400 naming ``tools`` or ``tool_choice``."""
    history = any(m["role"] == "tool" or m.get("tool_calls") for m in messages)
    if not body.tools and not history:
        if body.tool_choice is not None and body.tool_choice.type in ("any", "tool"):
            raise _bad(f"tool_choice {body.tool_choice.type!r} needs tools", "tool_choice")
        return None
    specs = [ToolSpec(t.name, t.description, t.input_schema) for t in body.tools or []]
    parallel = True
    choice = ToolChoice("auto" if body.tools else "none")
    if body.tool_choice is not None:
        kind = body.tool_choice.type
        parallel = not body.tool_choice.disable_parallel_tool_use
        if kind == "tool":
            if not body.tool_choice.name:
                raise _bad("tool_choice of type 'tool' needs a name", "tool_choice.name")
            choice = ToolChoice("named", body.tool_choice.name)
        elif kind == "any":
            choice = ToolChoice("required")
        else:
            choice = ToolChoice(kind)
    try:
        return plan_tools(messages, specs, choice, parallel, template)
    except ValueError as exc:
        param = "tool_choice" if "tool_choice" in str(exc) else "tools"
        raise _bad(str(exc), param) from None


def run_constraint(
    plan: ToolPlan | None, own: StructuredOutputsParams | None
) -> StructuredOutputsParams | None:
    """The run's constraint: ``output_config.format`` (``own``) or the plan's calls."""
    try:
        return with_constraint(plan, own)
    except ValueError as exc:
        raise _bad(str(exc), "tool_choice") from None


def tool_use_blocks(choice: Choice) -> list[ToolUseBlock]:
    """A finished choice's calls as ``tool_use`` blocks. A call cut short (its arguments
    not a whole JSON object) gets the empty input."""
    return [
        ToolUseBlock(id=call_id(call), name=call.name, input=call.arguments_object())
        for call in choice.tool_calls
    ]
