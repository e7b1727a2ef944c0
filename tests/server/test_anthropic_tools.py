"""Tool use on the Anthropic Messages API of a real ``heron serve`` (SmolLM2: Heron's
built-in tool prompt), with the official ``anthropic`` client. Forced calls (any, tool)
are grammar-enforced, so their input must match the tool's input_schema."""

from __future__ import annotations

import json
from typing import Any

import anthropic
import httpx
import jsonschema
import pytest

from tests.server.conftest import ServerProcess

pytestmark = pytest.mark.slow

MODEL = "smollm2"
SCHEMA = {
    "type": "object",
    "properties": {"city": {"type": "string", "maxLength": 20}},
    "required": ["city"],
    "additionalProperties": False,
}
TOOLS: list[Any] = [
    {"name": "get_weather", "description": "The weather in a city.", "input_schema": SCHEMA},
    {"name": "get_time", "description": "The time now.", "input_schema": {"type": "object"}},
]
ASK: list[Any] = [{"role": "user", "content": "What is the weather in Paris?"}]
FORCED: dict[str, Any] = {
    "model": MODEL,
    "max_tokens": 60,
    "extra_body": {"temperature": 0},  # the client no longer has a temperature argument
    "messages": ASK,
    "tools": TOOLS,
    "tool_choice": {"type": "tool", "name": "get_weather"},
}


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0)


def test_any_calls_a_tool_once(client: anthropic.Anthropic) -> None:
    r = client.messages.create(
        **{**FORCED, "tool_choice": {"type": "any", "disable_parallel_tool_use": True}}
    )
    assert r.stop_reason == "tool_use"
    uses = [b for b in r.content if b.type == "tool_use"]
    assert len(uses) == 1 and uses[0].id.startswith("toolu_")
    assert uses[0].name in ("get_weather", "get_time")
    if uses[0].name == "get_weather":
        jsonschema.validate(uses[0].input, SCHEMA)


def test_named_tool_round_trip(client: anthropic.Anthropic) -> None:
    r = client.messages.create(**FORCED)
    assert r.stop_reason == "tool_use"
    [use] = [b for b in r.content if b.type == "tool_use"]
    assert use.name == "get_weather"
    jsonschema.validate(use.input, SCHEMA)
    history: list[Any] = [
        *ASK,
        {"role": "assistant", "content": r.content},  # as the client hands it back
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": use.id, "content": "Sunny, 21 C."},
                {"type": "text", "text": "Thanks. Summarise it."},
            ],
        },
    ]
    final = client.messages.create(
        model=MODEL, max_tokens=20, messages=history, tools=TOOLS, tool_choice={"type": "none"}
    )
    assert final.stop_reason in ("end_turn", "max_tokens")
    assert [b.type for b in final.content] == ["text"]
    text = final.content[0].text  # type: ignore[union-attr]
    assert text and "<tool" not in text
    counted = client.messages.count_tokens(model=MODEL, messages=history, tools=TOOLS)
    bare = client.messages.count_tokens(model=MODEL, messages=ASK)
    assert counted.input_tokens > bare.input_tokens + 50  # tools and the result are in it


def test_streamed_tool_use_matches_the_whole(client: anthropic.Anthropic) -> None:
    whole = client.messages.create(**FORCED)
    [use] = [b for b in whole.content if b.type == "tool_use"]
    events = list(client.messages.create(**FORCED, stream=True))
    starts = [e for e in events if e.type == "content_block_start"]
    tool_starts = [e for e in starts if e.content_block.type == "tool_use"]
    assert len(tool_starts) == 1
    block = tool_starts[0].content_block
    assert block.name == "get_weather" and block.input == {}  # type: ignore[union-attr]
    assert block.id.startswith("toolu_")  # type: ignore[union-attr]
    index = tool_starts[0].index
    fragments = [
        e.delta.partial_json  # type: ignore[union-attr]
        for e in events
        if e.type == "content_block_delta" and e.index == index
    ]
    assert len(fragments) > 1
    assert json.loads("".join(fragments)) == use.input
    assert any(e.type == "content_block_stop" and e.index == index for e in events)
    [delta] = [e for e in events if e.type == "message_delta"]
    assert delta.delta.stop_reason == "tool_use"


@pytest.mark.parametrize(
    ("messages", "fragment"),
    [
        (
            [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": "toolu_x"}]}],
            "answers no earlier tool_use",
        ),
        (
            [
                {
                    "role": "user",
                    "content": [{"type": "tool_use", "id": "t", "name": "f", "input": {}}],
                }
            ],
            "assistant messages",
        ),
        (
            [{"role": "user", "content": [{"type": "tool_result", "tool_use_id": ""}]}],
            "tool_use_id",
        ),
    ],
)
def test_bad_tool_history_is_a_400(
    server: ServerProcess, messages: list[Any], fragment: str
) -> None:
    body = {"model": MODEL, "max_tokens": 4, "messages": messages}
    r = httpx.post(f"{server.base_url}/v1/messages", json=body, timeout=60)
    assert r.status_code == 400, r.text
    error = r.json()
    assert error["type"] == "error" and error["error"]["type"] == "invalid_request_error"
    assert fragment in error["error"]["message"]


@pytest.mark.parametrize(
    ("patch", "fragment"),
    [
        ({"tool_choice": {"type": "tool", "name": "nope"}}, "nope"),
        ({"tools": [{"name": "f", "input_schema": {"type": "string"}}]}, "tool 'f'"),
        ({"tools": [TOOLS[1], TOOLS[1]]}, "used twice"),
    ],
)
def test_bad_tools_are_a_400(
    client: anthropic.Anthropic, patch: dict[str, Any], fragment: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as bad:
        client.messages.create(**{**FORCED, **patch})
    assert fragment in bad.value.message
