"""Function tools in the Responses API on a real ``heron serve`` with the official client.
SmolLM2's template has no tool support, so Heron's built-in tool prompt and grammar are
used; only forced choices (required, named) are reliable on so small a model, so the tests
check shapes and that arguments validate, not the model's judgement."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest

from tests.server.conftest import ServerProcess

pytestmark = pytest.mark.slow

WEATHER_SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city.",
    "parameters": WEATHER_SCHEMA,
    "strict": True,
}
TIME = {
    "type": "function",
    "name": "get_time",
    "parameters": {"type": "object", "properties": {}, "additionalProperties": False},
}
ASK = "What is the weather in Paris?"
# One call: a parallel grammar lets so small a model go on calling until the budget ends.
GREEDY: dict[str, Any] = {"temperature": 0, "max_output_tokens": 60, "parallel_tool_calls": False}


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120
    )


def post(server: ServerProcess, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/responses", json=body, timeout=120)


def test_required_tool_call(client: openai.OpenAI, server: ServerProcess) -> None:
    resp = client.responses.create(
        model=server.model, input=ASK, tools=[WEATHER], tool_choice="required", **GREEDY
    )  # type: ignore[arg-type]
    assert resp.status == "completed"
    calls = [item for item in resp.output if item.type == "function_call"]
    assert len(calls) == len(resp.output) == 1 and calls[0].name == "get_weather"
    for call in calls:
        assert call.call_id.startswith("call_") and call.id and call.status == "completed"
        jsonschema.validate(json.loads(call.arguments), WEATHER_SCHEMA)
    assert resp.tools[0].name == "get_weather"  # type: ignore[union-attr]


def test_named_tool_call_one_only(client: openai.OpenAI, server: ServerProcess) -> None:
    resp = client.responses.create(
        model=server.model,
        input="What time is it?",
        tools=[WEATHER, TIME],  # type: ignore[list-item]
        tool_choice={"type": "function", "name": "get_time"},
        **GREEDY,
    )
    [call] = resp.output
    assert call.type == "function_call" and call.name == "get_time"
    assert json.loads(call.arguments) == {}
    assert resp.parallel_tool_calls is False


def test_round_trip_with_function_call_output(client: openai.OpenAI, server: ServerProcess) -> None:
    first = client.responses.create(
        model=server.model, input=ASK, tools=[WEATHER], tool_choice="required", **GREEDY
    )  # type: ignore[arg-type]
    call = next(item for item in first.output if item.type == "function_call")
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny, 21 C"}
    # Continued from the stored response ...
    stored = client.responses.create(
        model=server.model,
        previous_response_id=first.id,
        input=[result],  # type: ignore[list-item]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="none",
        **GREEDY,
    )
    # ... and with the whole conversation sent back as items (store false).
    items = [{"role": "user", "content": ASK}, *first.output, result]
    sent = client.responses.create(
        model=server.model,
        input=items,  # type: ignore[arg-type]
        tools=[WEATHER],  # type: ignore[list-item]
        tool_choice="none",
        store=False,
        **GREEDY,
    )
    for resp in (stored, sent):
        assert [item.type for item in resp.output] == ["message"]
        assert resp.output_text.strip()
    assert stored.usage and sent.usage
    assert stored.usage.input_tokens == sent.usage.input_tokens
    assert stored.output_text == sent.output_text


def test_streamed_tool_call(client: openai.OpenAI, server: ServerProcess) -> None:
    with client.responses.stream(
        model=server.model, input=ASK, tools=[WEATHER], tool_choice="required", **GREEDY
    ) as stream:  # type: ignore[arg-type]
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[0] == "response.created" and kinds[-1] == "response.completed"
    assert "response.function_call_arguments.delta" in kinds
    deltas: dict[str, str] = {}
    for e in events:
        if e.type == "response.function_call_arguments.delta":
            deltas[e.item_id] = deltas.get(e.item_id, "") + e.delta
    calls = [item for item in final.output if item.type == "function_call"]
    assert calls and {c.id: c.arguments for c in calls} == deltas
    done = [e for e in events if e.type == "response.function_call_arguments.done"]
    assert [(e.name, e.arguments) for e in done] == [(c.name, c.arguments) for c in calls]
    # Item events bracket each item: added, its deltas, done.
    added = [e.output_index for e in events if e.type == "response.output_item.added"]
    assert added == list(range(len(final.output)))


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice"),
        ({"tools": [{**WEATHER, "name": "bad name!"}]}, "tools"),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
        ({"tools": [{**WEATHER, "parameters": {"type": "string"}}]}, "tools"),
        ({"tools": [{**WEATHER, "extra": 1}]}, "tools.0.extra"),
        ({"tool_choice": {"type": "web_search_preview"}}, "tool_choice"),
        (
            {
                "tools": [WEATHER],
                "tool_choice": "required",
                "text": {"format": {"type": "json_object"}},
            },
            "tool_choice",
        ),
        (
            {"input": [{"type": "function_call_output", "call_id": "call_x", "output": "1"}]},
            "input.0.call_id",
        ),
        (
            {"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "[1]"}]},
            "input.0.arguments",
        ),
    ],
)
def test_bad_tools_are_400s(server: ServerProcess, extra: dict[str, Any], param: str) -> None:
    r = post(server, {"model": server.model, "input": "x", **extra})
    assert r.status_code == 400, r.text
    assert r.json()["error"]["param"] == param, r.json()
