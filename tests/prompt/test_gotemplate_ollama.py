"""Modelfile TEMPLATEs rendered as Ollama renders them: its prompt data model (messages,
tools, tool calls), legacy System/Prompt/Response templates, real-world-style templates, and
telling Go templates from Jinja.

Expected strings are derived by hand from Go's text/template rules and Ollama's template data."""

from __future__ import annotations

import json
from typing import Any

import pytest

from heron.prompt.gotemplate import (
    GoTemplate,
    TemplateError,
    is_go_template,
    render_ollama_prompt,
)

CHAT: list[dict[str, Any]] = [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": "Hi"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "2+2?"},
]

CHATML = (
    "{{- if .System }}<|im_start|>system\n{{ .System }}<|im_end|>\n{{ end }}"
    '{{- range .Messages }}{{ if ne .Role "system" }}<|im_start|>{{ .Role }}\n'
    "{{ .Content }}<|im_end|>\n{{ end }}{{ end }}<|im_start|>assistant\n"
)


def test_chatml_messages_template() -> None:
    assert render_ollama_prompt(CHATML, CHAT) == (
        "<|im_start|>system\nYou are terse.<|im_end|>\n"
        "<|im_start|>user\nHi<|im_end|>\n"
        "<|im_start|>assistant\nHello!<|im_end|>\n"
        "<|im_start|>user\n2+2?<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


LLAMA3 = """{{- if .System }}<|start_header_id|>system<|end_header_id|>

{{ .System }}<|eot_id|>
{{- end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 }}
{{- if eq .Role "user" }}<|start_header_id|>user<|end_header_id|>

{{ .Content }}<|eot_id|>{{ if $last }}<|start_header_id|>assistant<|end_header_id|>

{{ end }}
{{- else if eq .Role "assistant" }}<|start_header_id|>assistant<|end_header_id|>

{{ .Content }}{{ if not $last }}<|eot_id|>{{ end }}
{{- end }}
{{- end }}"""


def test_llama3_template_with_last_message_check() -> None:
    header = "<|start_header_id|>{}<|end_header_id|>\n\n"
    assert render_ollama_prompt(LLAMA3, CHAT) == (
        header.format("system") + "You are terse.<|eot_id|>"
        + header.format("user") + "Hi<|eot_id|>"
        + header.format("assistant") + "Hello!<|eot_id|>"
        + header.format("user") + "2+2?<|eot_id|>"
        + header.format("assistant")
    )  # fmt: skip
    # Ending on an assistant message leaves it open, to be continued.
    assert render_ollama_prompt(LLAMA3, CHAT[1:3]) == (
        header.format("user") + "Hi<|eot_id|>" + header.format("assistant") + "Hello!"
    )


PHI3 = """{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
<|{{ .Role }}|>
{{ .Content }}<|end|>
{{ if and $last (ne .Role "assistant") }}<|assistant|>
{{ end }}
{{- end }}"""


def test_phi3_style_template() -> None:
    assert render_ollama_prompt(PHI3, CHAT) == (
        "<|system|>\nYou are terse.<|end|>\n<|user|>\nHi<|end|>\n"
        "<|assistant|>\nHello!<|end|>\n<|user|>\n2+2?<|end|>\n<|assistant|>\n"
    )


LEGACY = (
    "{{ if .System }}<|system|>{{ .System }}</s>{{ end }}"
    "{{ if .Prompt }}<|user|>{{ .Prompt }}</s>{{ end }}<|assistant|>{{ .Response }}</s>"
)


def test_legacy_template_renders_once_per_turn() -> None:
    # Earlier turns carry their reply as .Response; the last stops right after .Response.
    assert render_ollama_prompt(LEGACY, CHAT) == (
        "<|system|>You are terse.</s><|user|>Hi</s><|assistant|>Hello!</s>"
        "<|user|>2+2?</s><|assistant|>"
    )
    assert render_ollama_prompt(LEGACY, [{"role": "user", "content": "Q"}]) == (
        "<|user|>Q</s><|assistant|>"
    )


def test_legacy_template_without_response_gets_it_appended() -> None:
    source = "{{ .System }}\nUser: {{ .Prompt }}\nAssistant:"
    assert render_ollama_prompt(source, CHAT) == (
        "You are terse.\nUser: Hi\nAssistant:Hello!\nUser: 2+2?\nAssistant:"
    )
    assert render_ollama_prompt("{{ .Prompt }}", [{"role": "user", "content": "raw"}]) == "raw"


def test_legacy_turns_split_on_system_and_skip_tools() -> None:
    chat = [
        {"role": "user", "content": "a"},
        {"role": "system", "content": "s"},
        {"role": "user", "content": "b"},
        {"role": "tool", "content": "ignored"},
    ]
    # The turn to generate is cut right after its .Response.
    assert render_ollama_prompt("[{{ .System }}|{{ .Prompt }}|{{ .Response }}]", chat) == (
        "[|a|][s|b|"
    )


def test_messages_are_collated_like_ollama() -> None:
    chat = [
        {"role": "system", "content": "one"},
        {"role": "System", "content": "two"},
        {"role": "user", "content": "a"},
        {"role": "user", "content": "b"},
        {"role": "tool", "content": "t1"},
        {"role": "tool", "content": "t2"},
    ]
    source = "{{ .System }}|{{ range .Messages }}{{ .Role }}:{{ .Content }};{{ end }}"
    assert render_ollama_prompt(source, chat) == (
        "one\n\ntwo|system:one\n\ntwo;user:a\n\nb;tool:t1;tool:t2;"
    )


TOOLS: list[dict[str, Any]] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather <now>",
            "parameters": {
                "type": "object",
                "required": ["city"],
                "properties": {
                    "city": {"type": "string", "description": "City name"},
                    "unit": {"type": "string", "enum": ["c", "f"], "default": "c"},
                },
            },
        },
    }
]
TOOL_JSON = (
    '{"type":"function","function":{"name":"get_weather","description":"Weather \\u003cnow\\u003e",'
    '"parameters":{"type":"object","required":["city"],"properties":{'
    '"city":{"type":"string","description":"City name"},"unit":{"type":"string","enum":["c","f"]}}}}}'
)
TOOL_CHAT: list[dict[str, Any]] = [
    {"role": "user", "content": "Weather in Paris?"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {
                "id": "c1",
                "function": {"name": "get_weather", "arguments": '{"unit": "c", "city": "Paris"}'},
            }
        ],
    },
    {"role": "tool", "content": "21C"},
]

QWEN = """{{- if or .System .Tools }}<|im_start|>system
{{- if .System }}
{{ .System }}
{{- end }}
{{- if .Tools }}
<tools>
{{- range .Tools }}
{{ .Function }}
{{- end }}
</tools>
{{- end }}<|im_end|>
{{ end }}
{{- range $i, $_ := .Messages }}
{{- $last := eq (len (slice $.Messages $i)) 1 -}}
{{- if eq .Role "user" }}<|im_start|>user
{{ .Content }}<|im_end|>
{{ else if eq .Role "assistant" }}<|im_start|>assistant
{{ if .Content }}{{ .Content }}
{{- else if .ToolCalls }}<tool_call>
{{ range .ToolCalls }}{"name": "{{ .Function.Name }}", "arguments": {{ .Function.Arguments }}}
{{ end }}</tool_call>
{{- end }}{{ if not $last }}<|im_end|>
{{ end }}
{{- else if eq .Role "tool" }}<|im_start|>user
<tool_response>
{{ .Content }}
</tool_response><|im_end|>
{{ end }}
{{- if and (ne .Role "assistant") $last }}<|im_start|>assistant
{{ end }}
{{- end }}"""


def test_qwen_style_template_with_tools_and_tool_calls() -> None:
    # Tool JSON keeps Ollama's field order, escapes HTML characters and drops schema keys its
    # structs lack ("default"); arguments keep their order and print as compact JSON.
    assert render_ollama_prompt(QWEN, TOOL_CHAT, TOOLS) == (
        "<|im_start|>system\n<tools>\n" + TOOL_JSON.split(',"function":', 1)[1][:-1] + "\n"
        "</tools><|im_end|>\n"
        "<|im_start|>user\nWeather in Paris?<|im_end|>\n"
        "<|im_start|>assistant\n<tool_call>\n"
        '{"name": "get_weather", "arguments": {"unit":"c","city":"Paris"}}\n'
        "</tool_call><|im_end|>\n"
        "<|im_start|>user\n<tool_response>\n21C\n</tool_response><|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_tools_print_and_encode_as_json() -> None:
    source = "{{ json $.Tools }}|{{ .Tools }}|{{ range .Tools }}{{ . }}{{ end }}{{ .Messages }}"
    assert render_ollama_prompt(source, [], TOOLS) == f"[{TOOL_JSON}]|[{TOOL_JSON}]|{TOOL_JSON}[]"
    call = "{{ range .Messages }}{{ range .ToolCalls }}{{ json . }}|{{ .ID }}{{ end }}{{ end }}"
    assert render_ollama_prompt(call, TOOL_CHAT) == (
        '{"id":"c1","function":{"index":0,"name":"get_weather",'
        '"arguments":{"unit":"c","city":"Paris"}}}|c1'
    )
    props = (
        "{{ range .Tools }}{{ range $k, $p := .Function.Parameters.Properties }}"
        "{{ $k }}:{{ $p.Type }}:{{ $p.Description }};{{ end }}{{ end }}{{ .Messages }}"
    )
    assert render_ollama_prompt(props, [], TOOLS) == "city:string:City name;unit:string:;[]"
    assert render_ollama_prompt("{{ if .Tools }}t{{ else }}none{{ end }}{{ .Messages }}", []) == (
        "none[]"
    )


def test_message_records_have_go_struct_fields() -> None:
    source = "{{ range .Messages }}{{ .Role }}|{{ .Content }}|{{ len .ToolCalls }}|{{ .Thinking }}{{ end }}"
    assert render_ollama_prompt(source, [{"role": "USER", "content": None}]) == "user||0|"
    with pytest.raises(TemplateError, match="can't evaluate field Nope"):
        render_ollama_prompt("{{ range .Messages }}{{ .Nope }}{{ end }}", CHAT)


@pytest.mark.parametrize(
    ("messages", "tools", "message"),
    [
        ([{"role": "user", "content": 5}], None, "message content must be a string"),
        (
            [{"role": "assistant", "tool_calls": [{"function": {"arguments": "{"}}]}],
            None,
            "not JSON",
        ),
        (
            [{"role": "assistant", "tool_calls": [{"function": {"arguments": "[1]"}}]}],
            None,
            "object",
        ),
        ([], [{"type": "function", "function": "x"}], "must be an object"),
    ],
)
def test_bad_ollama_inputs(messages: list[Any], tools: Any, message: str) -> None:
    with pytest.raises(TemplateError, match=message):
        render_ollama_prompt("{{ range .Messages }}{{ end }}", messages, tools)


def test_identifiers_pick_the_data_model() -> None:
    assert GoTemplate("{{ range $.Messages }}{{ .Content }}{{ end }}").identifiers() == {
        "$",
        "messages",
        "content",
    }
    assert GoTemplate("{{ if .System }}{{ $x := .Prompt }}{{ $x }}{{ end }}").identifiers() == {
        "system",
        "$x",
        "prompt",
    }


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        (CHATML, True),
        (LEGACY, True),
        ("{{ .Prompt }}", True),
        ("{{- range $i, $m := $.Messages }}{{ $m.Content }}{{ end }}", True),
        ("{{ range . }}x{{ end }}", True),
        ("{{ bos_token }}{% for m in messages %}{{ m.content }}{% endfor %}", False),
        ("{{ messages[0].content }}", False),
        ("{{ bos_token }}hello", False),
        ("no actions at all", False),
        ("{{/* only a comment */}}", False),
    ],
)
def test_is_go_template(source: str, expected: bool) -> None:
    assert is_go_template(source) is expected


def test_json_arguments_object_is_accepted_too() -> None:
    chat = [
        {
            "role": "assistant",
            "tool_calls": [{"function": {"name": "f", "arguments": {"b": 1, "a": [2]}}}],
        }
    ]
    source = (
        "{{ range .Messages }}{{ range .ToolCalls }}{{ .Function.Arguments }}{{ end }}{{ end }}"
    )
    assert json.loads(render_ollama_prompt(source, chat)) == {"b": 1, "a": [2]}
    assert render_ollama_prompt(source, chat) == '{"b":1,"a":[2]}'
