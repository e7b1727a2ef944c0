"""Tool calling on Ollama's ``/api/chat`` of a real ``heron serve`` (SmolLM2: Heron's
built-in tool prompt), with the official ``ollama`` client. Ollama has no tool_choice, so
the model decides; at temperature 0 SmolLM2's choice is fixed, and the checks that do not
depend on it (the prompt, the history, the shapes) are separate."""

from __future__ import annotations

from typing import Any

import httpx
import ollama
import pytest

from tests.server.conftest import ServerProcess

pytestmark = pytest.mark.slow

MODEL = "smollm2"
GREEDY = {"temperature": 0, "num_predict": 60}


def get_weather(city: str) -> str:
    """Get the current weather in a city.

    Args:
        city: The city's name.
    """
    return f"Sunny in {city}"


def turn(city: str) -> list[dict[str, Any]]:
    """One worked example: the question, the call, its result and the answer."""
    call = {"function": {"name": "get_weather", "arguments": {"city": city}}}
    return [
        {"role": "user", "content": f"What is the weather in {city}?"},
        {"role": "assistant", "content": "", "tool_calls": [call]},
        {"role": "tool", "content": "Sunny.", "tool_name": "get_weather"},
        {"role": "assistant", "content": f"It is sunny in {city}."},
    ]


# Two worked examples: greedy SmolLM2 then calls the tool for the third city.
ASK = [*turn("Paris"), *turn("Oslo"), {"role": "user", "content": "What is the weather in Rome?"}]
HISTORY: list[dict[str, Any]] = [
    {"role": "user", "content": "What is the weather in Paris?"},
    {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
    },
    {"role": "tool", "content": "Sunny, 21 degrees.", "tool_name": "get_weather"},
]


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> ollama.Client:
    return ollama.Client(host=server.base_url, timeout=300)


def test_tools_and_history_reach_the_prompt(server: ServerProcess) -> None:
    body = {
        "model": MODEL,
        "messages": HISTORY,
        "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}],
        "_debug_render_only": True,
    }
    r = httpx.post(f"{server.base_url}/api/chat", json=body, timeout=60)
    assert r.status_code == 200, r.text
    text = r.json()["debug_info"]["rendered_template"]
    assert '<tools>\n{"name": "get_weather"' in text
    call = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
    assert call in text
    assert "<tool_response>\nSunny, 21 degrees.\n</tool_response>" in text


def test_call_stream_and_round_trip(client: ollama.Client) -> None:
    r = client.chat(MODEL, messages=ASK, tools=[get_weather], options=GREEDY)
    calls = r.message.tool_calls
    assert calls, r.message.content
    assert not r.message.content
    assert [(c.function.name, dict(c.function.arguments)) for c in calls] == [
        ("get_weather", {"city": "Rome"})
    ]
    assert r.done_reason == "stop"
    # streamed: the call arrives whole in one chunk before the final one
    chunks = list(
        client.chat(MODEL, messages=ASK, tools=[get_weather], options=GREEDY, stream=True)
    )
    with_calls = [c for c in chunks if c.message.tool_calls]
    assert len(with_calls) == 1 and not with_calls[0].done
    streamed = with_calls[0].message.tool_calls or []
    assert [(c.function.name, dict(c.function.arguments)) for c in streamed] == [
        ("get_weather", {"city": "Rome"})
    ]
    assert all("<tool_" not in (c.message.content or "") for c in chunks)
    assert chunks[-1].done and chunks[-1].done_reason == "stop"
    # the call and its result go back; the model answers
    history = [
        *ASK,
        {"role": "assistant", "content": "", "tool_calls": [c.model_dump() for c in calls]},
        {"role": "tool", "content": "Rainy, 12 degrees.", "tool_name": "get_weather"},
    ]
    final = client.chat(MODEL, messages=history, tools=[get_weather], options=GREEDY)
    assert final.done and final.message.content
    assert not final.message.tool_calls, final.message.tool_calls
    assert "<tool_call>" not in final.message.content


def test_history_without_tools_offered(client: ollama.Client) -> None:
    r = client.chat(MODEL, messages=HISTORY, options={"num_predict": 8})
    assert r.done and r.message.content and not r.message.tool_calls


def test_wire_shape_of_a_call(server: ServerProcess) -> None:
    # what the client sends for get_weather, as plain JSON
    parameters = {
        "type": "object",
        "required": ["city"],
        "properties": {"city": {"type": "string", "description": "The city's name."}},
    }
    function = {
        "name": "get_weather",
        "description": "Get the current weather in a city.",
        "parameters": parameters,
    }
    tool = {"type": "function", "function": function}
    body = {"model": MODEL, "messages": ASK, "tools": [tool], "stream": False, "options": GREEDY}
    r = httpx.post(f"{server.base_url}/api/chat", json=body, timeout=300)
    assert r.status_code == 200, r.text
    reply = r.json()
    assert reply["message"]["tool_calls"] == [
        {"function": {"name": "get_weather", "arguments": {"city": "Rome"}}}
    ]
    assert reply["message"]["content"] == "" and reply["done_reason"] == "stop"
