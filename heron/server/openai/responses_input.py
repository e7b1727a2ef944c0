"""A Responses API request translated for the shared run: its input items as chat
messages, its checks, and its ``SamplingParams``.

Input items become the messages every chat template takes: ``developer`` is ``system``,
text parts are joined by newlines, a ``function_call`` is an assistant message's
``tool_calls`` entry (consecutive calls share one message), a ``function_call_output`` is a
``tool`` message, a ``reasoning`` item is the next assistant turn's ``reasoning_content``. ``instructions`` is a system message put first.
"""

from __future__ import annotations

import json
from typing import Any

from heron.sampling_params import SamplingParams
from heron.server.common import APIError
from heron.server.openai.responses_protocol import (
    ContentPart,
    FunctionCallItem,
    FunctionCallOutputItem,
    InputItem,
    ReasoningItem,
    ResponseCreateRequest,
    TextFormat,
    ToolChoiceFunction,
)
from heron.server.sampling import engine_fields
from heron.server.state import ServerState
from heron.structured import StructuredOutputsParams
from heron.tools import ToolChoice, ToolPlan, ToolSpec, plan_tools
from heron.tools.spec import EMPTY_PARAMETERS


def bad_request(message: str, param: str | None = None) -> APIError:
    return APIError(400, message, "invalid_request", param)


def _text(content: str | list[ContentPart]) -> str:
    if isinstance(content, str):
        return content
    return "\n".join(part.text for part in content)


def _arguments(text: str, where: str) -> dict[str, Any]:
    """A call's arguments as the shared message form holds them (an object). Raises a 400
    naming ``where`` for text that is not a JSON object."""
    try:
        value = json.loads(text or "{}")
    except ValueError:
        value = None
    if not isinstance(value, dict):
        raise bad_request("function_call arguments must be a JSON object in text", where)
    return value


def input_messages(
    items: str | list[InputItem], history: list[dict[str, Any]]
) -> list[dict[str, Any]]:
    """The request's ``input`` as chat messages in the shared form (see the module's
    docstring), after the stored ``history``. Raises a 400 for a function_call_output that
    answers no earlier call."""
    if isinstance(items, str):
        return [{"role": "user", "content": items}]
    names = {  # call_id -> function name, for the tool messages
        call["id"]: call["function"]["name"] for m in history for call in m.get("tool_calls", [])
    }
    messages: list[dict[str, Any]] = []
    reasoning: list[str] = []  # of the next assistant turn
    for i, item in enumerate(items):
        if isinstance(item, FunctionCallItem):
            names[item.call_id] = item.name
            arguments = _arguments(item.arguments, f"input.{i}.arguments")
            function = {"name": item.name, "arguments": arguments}
            call = {"id": item.call_id, "type": "function", "function": function}
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant" and "tool_calls" in last:
                last["tool_calls"].append(call)
            else:
                messages.append({"role": "assistant", "content": "", "tool_calls": [call]})
        elif isinstance(item, FunctionCallOutputItem):
            if item.call_id not in names:
                raise bad_request(
                    f"function_call_output {item.call_id[:80]!r} answers no earlier function_call",
                    f"input.{i}.call_id",
                )
            messages.append(
                {
                    "role": "tool",
                    "tool_call_id": item.call_id,
                    "name": names[item.call_id],
                    "content": _text(item.output),
                }
            )
        elif isinstance(item, ReasoningItem):
            reasoning.extend(part.text for part in item.content or item.summary)
            continue
        else:
            role = "system" if item.role == "developer" else item.role
            messages.append({"role": role, "content": _text(item.content)})
        if reasoning and messages[-1]["role"] == "assistant":
            # The shared form's field; chat templates that show past reasoning read it.
            messages[-1]["reasoning_content"] = "\n".join(reasoning)
        reasoning = []
    return messages


def tool_plan(
    body: ResponseCreateRequest, messages: list[dict[str, Any]], template: str | None
) -> ToolPlan | None:
    """The request's tool plan (heron/tools), or None when it neither offers tools nor has
    tool history. Raises a 400 for bad tools or a choice that needs tools."""
    history = any(m["role"] == "tool" or m.get("tool_calls") for m in messages)
    if not body.tools and not history:
        if body.tool_choice not in (None, "none", "auto"):
            raise bad_request("tool_choice needs tools", "tool_choice")
        return None
    specs = [
        ToolSpec(t.name, t.description, EMPTY_PARAMETERS if t.parameters is None else t.parameters)
        for t in body.tools or []
    ]
    chosen = body.tool_choice
    if isinstance(chosen, ToolChoiceFunction):
        choice = ToolChoice("named", chosen.name)
    else:
        choice = ToolChoice(chosen or ("auto" if body.tools else "none"))
    try:
        return plan_tools(messages, specs, choice, body.parallel_tool_calls is not False, template)
    except ValueError as exc:
        raise bad_request(
            str(exc), "tool_choice" if "tool_choice" in str(exc) else "tools"
        ) from None


def check_request(state: ServerState, body: ResponseCreateRequest) -> None:
    """Refuse what Heron does not serve, and the server's caps, before any work."""
    if body.include:
        raise bad_request(f"include {body.include[0]!r} is not supported; only [] is", "include")
    limits = state.limits
    if body.max_output_tokens is not None and body.max_output_tokens > limits.max_tokens:
        raise bad_request(
            f"max_output_tokens must be at most {limits.max_tokens}, got {body.max_output_tokens}",
            "max_output_tokens",
        )
    if isinstance(body.input, list) and not body.input:
        raise bad_request("input is empty", "input")
    fmt = body.text.format if body.text is not None else None
    if fmt is not None and fmt.type == "json_schema":
        if not fmt.name:
            raise bad_request("a json_schema format needs a name", "text.format.name")
        if fmt.schema_ is None:
            raise bad_request("a json_schema format needs a schema", "text.format.schema")
    elif fmt is not None and (fmt.schema_ is not None or fmt.name is not None):
        raise bad_request(
            f"name and schema belong to the json_schema format, not {fmt.type!r}", "text.format"
        )


def reasoning_enabled(body: ResponseCreateRequest) -> bool | None:
    """The request's thinking switch: None (the model's default) when ``reasoning`` is
    absent or sets no effort, False for effort ``none``, True for any other effort or a
    summary."""
    reasoning = body.reasoning
    if reasoning is None:
        return None
    if reasoning.summary is not None or reasoning.generate_summary is not None:
        return True
    if reasoning.effort is None:
        return None
    return reasoning.effort != "none"


def structured_outputs(
    fmt: TextFormat | None, plan: ToolPlan | None
) -> StructuredOutputsParams | None:
    """The output constraint: what ``text.format`` asks for, else the plan's call grammar
    (a format of the request's own wins over auto's grammar: calls are then parsed, not
    enforced). Raises a 400 for a forced call with a JSON format."""
    own = None
    if fmt is not None and fmt.type == "json_object":
        own = StructuredOutputsParams(json_object=True)
    elif fmt is not None and fmt.type == "json_schema":
        own = StructuredOutputsParams(json=fmt.schema_)
    if plan is None or plan.structured is None:
        return own
    if own is None:
        return plan.structured
    if plan.forced:
        raise bad_request(
            "tool_choice required or a named function cannot be combined with a JSON text.format",
            "tool_choice",
        )
    return own


def sampling_params(
    body: ResponseCreateRequest,
    max_tokens: int,
    vocab_size: int,
    defaults: dict[str, Any],
    constraint: StructuredOutputsParams | None,
) -> SamplingParams:
    """The request's ``SamplingParams`` over the model's Modelfile ``defaults``; the
    engine's ValueErrors become 400s."""
    kwargs: dict[str, Any] = {k: v for k, v in defaults.items() if k != "max_tokens"}
    given = {"temperature": body.temperature, "top_p": body.top_p}
    kwargs.update({k: v for k, v in given.items() if v is not None})
    kwargs.update(engine_fields(body, vocab_size))
    try:
        return SamplingParams(**kwargs, max_tokens=max_tokens, structured_outputs=constraint)
    except ValueError as exc:
        first = str(exc).split(" ", 1)[0]
        raise bad_request(str(exc), first if first in given else None) from exc
