"""Heron's built-in tool prompt, for chat templates without tool support (SmolLM2's).

The tools go into the system message as JSON schemas with the Hermes call format
(``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``), which the hermes parser
reads back and the hermes grammar enforces. History is rewritten into plain turns the
template can render: an assistant's calls become ``<tool_call>`` text in its message, and
tool results become ``<tool_response>`` text in a user message (consecutive results share
one).

Messages come in the shared form the families build (OpenAI's): an assistant message may
have ``tool_calls: [{"id", "function": {"name", "arguments": {...}}}]``; a tool result is
``{"role": "tool", "content": str, "tool_call_id", "name"}``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from heron.tools.spec import ToolSpec

TOOL_PROMPT = """\
# Tools

You may call one or more functions to help with the user's request. The functions are \
described by JSON schemas inside <tools></tools>:
<tools>
{tools}
</tools>

To call a function, write a JSON object with its name and arguments inside \
<tool_call></tool_call> tags, one per call:
<tool_call>
{{"name": "<function name>", "arguments": {{<arguments>}}}}
</tool_call>
The results come back inside <tool_response></tool_response> tags."""


def tool_prompt(tools: Sequence[ToolSpec]) -> str:
    """The system-message block that lists ``tools``."""
    listed = "\n".join(json.dumps(t.to_openai()["function"], ensure_ascii=False) for t in tools)
    return TOOL_PROMPT.format(tools=listed)


def call_text(name: str, arguments: Any) -> str:
    """One call as the model writes it in this prompt's format."""
    if isinstance(arguments, str):
        arguments = json.loads(arguments)
    body = json.dumps({"name": name, "arguments": arguments}, ensure_ascii=False)
    return f"<tool_call>\n{body}\n</tool_call>"


def builtin_messages(
    messages: Sequence[dict[str, Any]], tools: Sequence[ToolSpec]
) -> list[dict[str, Any]]:
    """``messages`` rewritten for a template without tool support: the tool prompt joins
    the system message (or opens the conversation) when ``tools`` is not empty, calls and
    results become text. Returns new dicts; ``messages`` is not mutated."""
    out: list[dict[str, Any]] = []
    for message in messages:
        role = message.get("role")
        if role == "assistant" and message.get("tool_calls"):
            calls = [
                call_text(c["function"]["name"], c["function"].get("arguments") or {})
                for c in message["tool_calls"]
            ]
            text = "\n".join([message["content"], *calls] if message.get("content") else calls)
            out.append({"role": "assistant", "content": text})
        elif role == "tool":
            result = f"<tool_response>\n{message.get('content') or ''}\n</tool_response>"
            if out and out[-1].get("tool_results"):
                out[-1]["content"] += "\n" + result
            else:
                out.append({"role": "user", "content": result, "tool_results": True})
        else:
            out.append({k: v for k, v in message.items() if k != "tool_calls"})
    for message in out:
        message.pop("tool_results", None)
    if tools:
        block = tool_prompt(tools)
        if out and out[0].get("role") == "system":
            out[0] = dict(out[0], content=f"{out[0].get('content') or ''}\n\n{block}".lstrip())
        else:
            out.insert(0, {"role": "system", "content": block})
    return out
