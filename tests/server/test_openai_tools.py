"""Tool calling on the OpenAI chat API of a real ``heron serve`` (SmolLM2, whose template
has no tool support: Heron's built-in tool prompt and the hermes format), with the
official ``openai`` client. Forced calls (required, named) are grammar-enforced, so their
arguments must match the tool's schema whatever the tiny model would write."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.server.conftest import ServerProcess

pytestmark = pytest.mark.slow

MODEL = "smollm2"
WEATHER_SCHEMA = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "maxLength": 20},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "unit"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "The current weather in a city.",
            "parameters": WEATHER_SCHEMA,
        },
    },
    {"type": "function", "function": {"name": "get_time", "description": "The time now."}},
]
ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def test_required_call_matches_the_schema(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice="required",
        parallel_tool_calls=False,
        temperature=0,
        max_tokens=80,
    )
    choice = r.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    calls = choice.message.tool_calls
    assert calls is not None and len(calls) == 1
    call = calls[0]
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name in ("get_weather", "get_time")
    arguments = json.loads(call.function.arguments)
    if call.function.name == "get_weather":
        jsonschema.validate(arguments, WEATHER_SCHEMA)


def test_named_tool_is_called(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
        max_tokens=80,
    )
    calls = r.choices[0].message.tool_calls
    assert calls is not None and [c.function.name for c in calls] == ["get_weather"]
    jsonschema.validate(json.loads(calls[0].function.arguments), WEATHER_SCHEMA)
    assert r.choices[0].finish_reason == "tool_calls"


def test_streamed_call_reassembles_to_the_same_call(client: openai.OpenAI) -> None:
    kw: dict[str, Any] = {
        "model": MODEL,
        "messages": ASK,
        "tools": TOOLS,
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
        "temperature": 0,
        "max_tokens": 80,
    }
    whole = client.chat.completions.create(**kw).choices[0].message.tool_calls
    assert whole is not None
    pieces = []
    finish = None
    for chunk in client.chat.completions.create(**kw, stream=True):
        delta = chunk.choices[0].delta
        assert not delta.content  # no markup leaks into content
        pieces += delta.tool_calls or []
        finish = chunk.choices[0].finish_reason or finish
    assert finish == "tool_calls"
    first = pieces[0]
    assert first.index == 0 and first.id and first.id.startswith("call_")
    assert first.type == "function" and first.function is not None
    assert first.function.name == "get_weather" and first.function.arguments == ""
    assert len(pieces) > 2  # the arguments streamed in fragments
    assert all(p.id is None and p.function and p.function.name is None for p in pieces[1:])
    arguments = "".join(p.function.arguments or "" for p in pieces if p.function)
    assert json.loads(arguments) == json.loads(whole[0].function.arguments)


def test_round_trip_call_result_answer(client: openai.OpenAI) -> None:
    first = client.chat.completions.create(
        model=MODEL,
        messages=ASK,
        tools=TOOLS,
        tool_choice={"type": "function", "function": {"name": "get_weather"}},
        temperature=0,
        max_tokens=80,
    )
    message = first.choices[0].message
    assert message.tool_calls
    call = message.tool_calls[0]
    history: list[Any] = [
        *ASK,
        message.model_dump(exclude_none=True),
        {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21 degrees."},
    ]
    final = client.chat.completions.create(
        model=MODEL, messages=history, tools=TOOLS, tool_choice="none", max_tokens=24
    )
    answer = final.choices[0]
    assert answer.message.tool_calls is None
    assert answer.message.content and "<tool_" not in answer.message.content
    assert answer.finish_reason in ("stop", "length")
    # the tool result is in the prompt
    bare = client.chat.completions.create(model=MODEL, messages=ASK, max_tokens=1)
    assert final.usage and bare.usage
    assert final.usage.prompt_tokens > bare.usage.prompt_tokens + 20


def test_auto_never_leaks_markup(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=TOOLS, temperature=0, max_tokens=60
    )
    choice = r.choices[0]
    assert "<tool_call>" not in (choice.message.content or "")
    if choice.message.tool_calls:
        assert choice.finish_reason == "tool_calls"
        for call in choice.message.tool_calls:
            assert call.function.name in ("get_weather", "get_time")


def _bad(server: ServerProcess, param: str, **body: Any) -> None:
    full = {"model": MODEL, "messages": ASK, "max_tokens": 4, **body}
    r = httpx.post(f"{server.base_url}/v1/chat/completions", json=full, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error


CALL = {"id": "call_1", "type": "function", "function": {"name": "get_time", "arguments": "{}"}}


@pytest.mark.parametrize(
    ("param", "body"),
    [
        (
            "tool_choice",
            {"tools": TOOLS, "tool_choice": {"type": "function", "function": {"name": "nope"}}},
        ),
        ("tool_choice", {"tool_choice": "required"}),
        ("tools", {"tools": [{"type": "function", "function": {"name": "bad name"}}]}),
        ("tools", {"tools": [TOOLS[1], TOOLS[1]]}),
        (
            "tools",
            {
                "tools": [
                    {
                        "type": "function",
                        "function": {
                            "name": "f",
                            "parameters": {"type": "object", "properties": 3},
                        },
                    }
                ]
            },
        ),
        ("functions", {"functions": [{"name": "f"}]}),
        ("messages.1.tool_call_id", {"messages": [*ASK, {"role": "tool", "content": "x"}]}),
        (
            "messages.1.tool_call_id",
            {"messages": [*ASK, {"role": "tool", "content": "x", "tool_call_id": "call_9"}]},
        ),
        (
            "messages.1.tool_calls.0.function.arguments",
            {
                "messages": [
                    *ASK,
                    {
                        "role": "assistant",
                        "tool_calls": [{**CALL, "function": {"name": "f", "arguments": "{nope"}}],
                    },
                ]
            },
        ),
        (
            "messages.0.tool_calls",
            {"messages": [{"role": "user", "content": "x", "tool_calls": [CALL]}]},
        ),
        ("messages.0", {"messages": [{"role": "function", "content": "x", "name": "f"}]}),
    ],
)
def test_bad_tool_input_is_a_400(server: ServerProcess, param: str, body: dict[str, Any]) -> None:
    _bad(server, param, **body)


def test_unknown_role_is_a_400(server: ServerProcess) -> None:
    messages = [{"role": "robot", "content": "x"}]
    r = httpx.post(
        f"{server.base_url}/v1/chat/completions",
        json={"model": MODEL, "messages": messages},
        timeout=60,
    )
    assert r.status_code == 400 and "error" in r.json()
