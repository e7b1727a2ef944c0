"""What a request's tools change in a run: the prompt, the output parser, the grammar.

``plan_tools`` is the one entry point the API families use (OpenAI chat, Anthropic
messages, Ollama chat, the Responses API): given the conversation in the shared message
form, the tools, the choice, whether calls may be parallel and the chat template, it
returns the messages and template-side tools to render, the parser factory for the run,
and the constraint that enforces calls (or None).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from heron.server.parsing import ParserFactory
from heron.structured import StructuredOutputsParams
from heron.tools.prompt import builtin_messages
from heron.tools.registry import detect_format, get_format
from heron.tools.spec import ToolChoice, ToolSpec, check_tools


@dataclass(slots=True)
class ToolPlan:
    """``messages`` and ``tools`` go to ``ChatRenderer.encode`` (``tools`` is None when
    the prompt carries them itself, or none are offered); ``parser`` makes each choice's
    tool-call parser; ``structured`` enforces the calls, ``forced`` when the reply must be
    calls (required or named), else only the calls the model opens (auto)."""

    messages: list[dict[str, Any]]
    tools: list[dict[str, Any]] | None
    parser: ParserFactory | None
    structured: StructuredOutputsParams | None
    format: str
    forced: bool = False


def plan_tools(
    messages: Sequence[dict[str, Any]],
    tools: Sequence[ToolSpec],
    choice: ToolChoice,
    parallel: bool,
    template: str | None,
) -> ToolPlan:
    """The plan for ``tools`` under ``choice`` with a model whose chat template is
    ``template``. A template that writes a known call format gets the tools itself and its
    format's parser; any other gets Heron's built-in tool prompt and the hermes format.
    With ``none`` (or no tools) nothing is offered or parsed, but tool history still
    renders. Raises ValueError for bad tools (see ``check_tools``)."""
    check_tools(list(tools), choice)
    detected = detect_format(template)
    fmt = get_format(detected or "hermes")
    offered = list(tools) if choice.mode != "none" else []
    if detected is None:
        rendered = builtin_messages(messages, offered)
        template_tools = None
    else:
        rendered = [dict(m) for m in messages]
        template_tools = [t.to_openai() for t in offered] or None
    if not offered:
        return ToolPlan(rendered, None, None, None, fmt.name)
    structured = fmt.constraint(offered, choice, parallel)
    forced = choice.mode in ("required", "named")
    return ToolPlan(rendered, template_tools, fmt.parser, structured, fmt.name, forced)


def with_constraint(
    plan: ToolPlan | None, own: StructuredOutputsParams | None
) -> StructuredOutputsParams | None:
    """The constraint a run gets: the request's ``own`` (a JSON schema for the reply) wins
    over auto's call grammar (calls are then parsed, not enforced). Raises ValueError when
    a forced call meets a constraint of the request's own."""
    if plan is None or plan.structured is None:
        return own
    if own is None:
        return plan.structured
    if plan.forced:
        raise ValueError("a forced tool call cannot be combined with a response format")
    return own
