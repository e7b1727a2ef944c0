"""OpenAI's Responses API (``/v1/responses``) on a real ``heron serve``, driven by the
official ``openai`` client, with plain httpx for the wire format and for bodies the client
would not send. Every response body is checked against the SDK's own pydantic types."""

from __future__ import annotations

import json
from typing import Any

import httpx
import jsonschema
import openai
import pytest
from openai.types.responses import Response, ResponseStreamEvent
from pydantic import BaseModel, Field, TypeAdapter

from tests.server.conftest import ServerProcess

pytestmark = pytest.mark.slow

STREAM_EVENT: TypeAdapter[Any] = TypeAdapter(ResponseStreamEvent)
GREEDY: dict[str, Any] = {"temperature": 0, "max_output_tokens": 20}


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=120
    )


def post(server: ServerProcess, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.base_url}/v1/responses", json=body, timeout=120)


def assert_error(r: httpx.Response, status: int, param: str | None, *words: str) -> None:
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"message", "type", "param", "code"}
    assert err["param"] == param, err
    for word in words:
        assert word in err["message"], err


def sse(server: ServerProcess, body: dict[str, Any]) -> list[dict[str, Any]]:
    """The events of a streamed response, checking that each ``event:`` line names its
    data's type."""
    url = f"{server.base_url}/v1/responses"
    with httpx.stream("POST", url, json={**body, "stream": True}, timeout=120) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        raw = r.read().decode()
    events = []
    for block in raw.strip().split("\n\n"):
        head, data = block.split("\n")
        event = json.loads(data.removeprefix("data: "))
        assert head == f"event: {event['type']}"
        events.append(event)
    return events


# ---------------------------------------------------------------------------- text
def test_create_text(client: openai.OpenAI, server: ServerProcess) -> None:
    resp = client.responses.create(
        model=server.model, input="Name a colour.", temperature=0, max_output_tokens=30
    )
    assert resp.id.startswith("resp_") and resp.object == "response"
    assert resp.status == "completed" and resp.error is None
    assert resp.output_text.strip()
    [message] = resp.output
    assert message.type == "message" and message.role == "assistant"
    assert message.status == "completed" and message.content[0].annotations == []
    usage = resp.usage
    assert usage is not None and usage.input_tokens > 0 and usage.output_tokens > 0
    assert usage.total_tokens == usage.input_tokens + usage.output_tokens
    assert usage.output_tokens_details.reasoning_tokens == 0


def test_raw_body_is_the_sdk_shape(server: ServerProcess) -> None:
    r = post(server, {"model": server.model, "input": "Hi", "max_output_tokens": 5})
    assert r.status_code == 200, r.text
    body = r.json()
    Response.model_validate(body)
    assert body["model"] == server.model and body["store"] is True
    assert body["text"] == {"format": {"type": "text"}} and body["tools"] == []


def test_instructions_are_a_system_message_first(
    client: openai.OpenAI, server: ServerProcess
) -> None:
    text = "Answer in one word."
    with_instructions = client.responses.create(
        model=server.model, instructions=text, input="Sky colour?", **GREEDY
    )
    as_item = client.responses.create(
        model=server.model,
        input=[
            {"role": "developer", "content": text},
            {"role": "user", "content": [{"type": "input_text", "text": "Sky colour?"}]},
        ],
        **GREEDY,
    )
    longer = client.responses.create(
        model=server.model, instructions=text * 3, input="Sky colour?", **GREEDY
    )
    assert with_instructions.instructions == text
    assert with_instructions.output_text == as_item.output_text
    assert with_instructions.usage and as_item.usage and longer.usage
    assert with_instructions.usage.input_tokens == as_item.usage.input_tokens
    assert longer.usage.input_tokens > with_instructions.usage.input_tokens


def test_length_is_incomplete(client: openai.OpenAI, server: ServerProcess) -> None:
    resp = client.responses.create(
        model=server.model, input="Tell me a long story.", max_output_tokens=3, temperature=0
    )
    assert resp.status == "incomplete"
    assert resp.incomplete_details is not None
    assert resp.incomplete_details.reason == "max_output_tokens"
    assert resp.usage is not None and resp.usage.output_tokens == 3
    assert resp.output[0].status == "incomplete"


# ----------------------------------------------------------------------- streaming
def test_stream_events_in_order(client: openai.OpenAI, server: ServerProcess) -> None:
    body = {"model": server.model, "input": "Say hi.", "temperature": 0, "max_output_tokens": 40}
    events = sse(server, body)
    for event in events:
        STREAM_EVENT.validate_python(event)
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    kinds = [e["type"] for e in events]
    deltas = kinds.count("response.output_text.delta")
    assert deltas > 0
    assert kinds == [
        "response.created",
        "response.in_progress",
        "response.output_item.added",
        "response.content_part.added",
        *["response.output_text.delta"] * deltas,
        "response.output_text.done",
        "response.content_part.done",
        "response.output_item.done",
        f"response.{events[-1]['response']['status']}",
    ]
    assert events[0]["response"]["status"] == "in_progress"
    final = events[-1]["response"]
    text = "".join(e["delta"] for e in events if e["type"] == "response.output_text.delta")
    assert final["output"][0]["content"][0]["text"] == text
    whole = client.responses.create(**body)  # the same greedy answer, not streamed
    assert whole.output_text == text
    assert final["usage"]["output_tokens"] == whole.usage.output_tokens  # type: ignore[union-attr]


def test_stream_helper(client: openai.OpenAI, server: ServerProcess) -> None:
    with client.responses.stream(
        model=server.model, input="Say hi.", temperature=0, max_output_tokens=60
    ) as stream:
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        final = stream.get_final_response()
    assert final.status == "completed" and final.output_text == text


def test_create_stream_true(client: openai.OpenAI, server: ServerProcess) -> None:
    stream = client.responses.create(
        model=server.model, input="Hi", max_output_tokens=4, stream=True
    )
    events = list(stream)
    assert events[0].type == "response.created"
    assert events[-1].type == "response.incomplete"


# ---------------------------------------------------------------- structured text
class City(BaseModel):
    name: str = Field(max_length=20)
    population: int = Field(ge=0, le=10**8)


def test_parse_text_format(client: openai.OpenAI, server: ServerProcess) -> None:
    resp = client.responses.parse(
        model=server.model,
        input="Describe a city.",
        text_format=City,
        temperature=0,
        max_output_tokens=100,
    )
    assert resp.status == "completed"
    assert isinstance(resp.output_parsed, City)
    jsonschema.validate(json.loads(resp.output_text), City.model_json_schema())
    assert resp.text is not None and resp.text.format is not None
    assert resp.text.format.type == "json_schema"


def test_json_object_format(client: openai.OpenAI, server: ServerProcess) -> None:
    resp = client.responses.create(
        model=server.model,
        input='Return {"ok": true}',
        text={"format": {"type": "json_object"}},
        temperature=0,
        max_output_tokens=60,
    )
    assert resp.status == "completed"
    assert isinstance(json.loads(resp.output_text), dict)


def test_bad_schema_is_a_400(server: ServerProcess) -> None:
    fmt = {"type": "json_schema", "name": "x", "schema": {"type": "object", "minProperties": -1}}
    r = post(server, {"model": server.model, "input": "x", "text": {"format": fmt}})
    assert_error(r, 400, "text.format")
