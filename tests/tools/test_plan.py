"""Tool specs' validation, the built-in tool prompt, and what plan_tools picks."""

from __future__ import annotations

import pytest

from heron.tools import ToolChoice, ToolSpec, check_tools, plan_tools
from heron.tools.prompt import builtin_messages

SCHEMA = {"type": "object", "properties": {"q": {"type": "string"}}, "required": ["q"]}
TOOL = ToolSpec("search", "Search the web.", SCHEMA)
HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Find cats."},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "c1",
                "type": "function",
                "function": {"name": "search", "arguments": {"q": "cats"}},
            }
        ],
    },
    {"role": "tool", "content": "3 cats", "tool_call_id": "c1"},
    {"role": "tool", "content": "more", "tool_call_id": "c2"},
]


@pytest.mark.parametrize(
    ("tools", "choice", "message"),
    [
        ([ToolSpec("a b")], ToolChoice(), "tool name 'a b'"),
        ([ToolSpec("x" * 65)], ToolChoice(), "1 to 64"),
        ([TOOL, TOOL], ToolChoice(), "used twice"),
        ([ToolSpec(f"t{i}") for i in range(129)], ToolChoice(), "at most 128"),
        ([ToolSpec("f", None, {"type": "string"})], ToolChoice(), "tool 'f': parameters"),
        ([ToolSpec("f", None, {"type": "object", "minProperties": "x"})], ToolChoice(), "'f'"),
        ([TOOL], ToolChoice("named", "other"), "'other', which is not in tools"),
        ([], ToolChoice("required"), "needs at least one tool"),
    ],
)
def test_bad_tools_name_the_problem(
    tools: list[ToolSpec], choice: ToolChoice, message: str
) -> None:
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        check_tools(tools, choice)


def test_builtin_prompt_rewrites_history() -> None:
    out = builtin_messages(HISTORY, [TOOL])
    assert [m["role"] for m in out] == ["system", "user", "assistant", "user"]
    assert out[0]["content"].startswith("Be brief.\n\n# Tools")
    assert '{"name": "search", "description": "Search the web."' in out[0]["content"]
    assert out[2]["content"] == (
        '<tool_call>\n{"name": "search", "arguments": {"q": "cats"}}\n</tool_call>'
    )
    assert out[3]["content"] == (
        "<tool_response>\n3 cats\n</tool_response>\n<tool_response>\nmore\n</tool_response>"
    )
    assert all("tool_calls" not in m and "tool_results" not in m for m in out)
    assert HISTORY[2]["tool_calls"]  # the input is not mutated


def test_plan_without_template_support_uses_the_builtin_prompt() -> None:
    plan = plan_tools(HISTORY, [TOOL], ToolChoice("required"), False, "{{ m.content }}")
    assert plan.format == "hermes" and plan.tools is None
    assert "# Tools" in plan.messages[0]["content"]
    assert plan.parser is not None and plan.structured is not None
    assert plan.structured.grammar is not None and "search" in plan.structured.grammar


def test_plan_with_template_support_passes_tools() -> None:
    plan = plan_tools(HISTORY, [TOOL], ToolChoice("auto"), True, "x [TOOL_CALLS] y")
    assert plan.format == "mistral"
    assert plan.tools == [TOOL.to_openai()]
    assert plan.messages == HISTORY


def test_plan_none_offers_nothing_but_renders_history() -> None:
    plan = plan_tools(HISTORY, [TOOL], ToolChoice("none"), True, None)
    assert plan.parser is None and plan.structured is None and plan.tools is None
    assert "# Tools" not in plan.messages[0]["content"]
    assert plan.messages[3]["content"].startswith("<tool_response>")


# The tool parts of Qwen2.5's chat template (hermes format), abridged.
QWEN_STYLE = """\
{%- if tools %}<|im_start|>system
# Tools
<tools>
{%- for tool in tools %}
{{ tool | tojson }}
{%- endfor %}
</tools><|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == "assistant" and message.tool_calls %}<|im_start|>assistant
{%- for tool_call in message.tool_calls %}
<tool_call>
{"name": "{{ tool_call.function.name }}", "arguments": {{ tool_call.function.arguments | tojson }}}
</tool_call>
{%- endfor %}<|im_end|>
{% elif message.role == "tool" %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}<|im_start|>assistant
"""


def test_a_template_with_tool_support_renders_the_shared_form() -> None:
    from heron.prompt.jinja import render_chat_template

    plan = plan_tools(HISTORY[1:4], [TOOL], ToolChoice("auto"), True, QWEN_STYLE)
    assert plan.format == "hermes" and plan.tools is not None
    text = render_chat_template(QWEN_STYLE, plan.messages, tools=plan.tools)
    assert '<tools>{"type": "function", "function": {"name": "search"' in text
    assert '<tool_call>\n{"name": "search", "arguments": {"q": "cats"}}\n</tool_call>' in text
    assert "<tool_response>\n3 cats\n</tool_response>" in text
    assert "# Tools\n<tools>" in text and "You may call" not in text  # not the built-in prompt
