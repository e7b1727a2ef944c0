"""Structured output through the Ollama API (``format``: "json" or a JSON schema, on
/api/chat and /api/generate, streamed and not) and the Anthropic API
(``output_config.format``, and the SDK's ``messages.parse``), with their official clients
against a real ``heron serve``; bad schemas are 400s in each family's shape."""

from __future__ import annotations

import json
from typing import Any, Literal

import anthropic
import httpx
import jsonschema
import ollama
import pytest
from pydantic import BaseModel, ConfigDict, Field

from tests.server.conftest import ServerProcess

pytestmark = pytest.mark.slow

MODEL = "smollm2"
GREEDY = {"temperature": 0, "num_predict": 60}
CLAUDE_GREEDY = {"temperature": 0}  # the anthropic client has no temperature argument


class City(BaseModel):
    # Closed and bounded, so that a tiny model cannot wander (extra keys, digits forever)
    # inside a valid answer: JSON schema allows extra keys unless additionalProperties is false.
    model_config = ConfigDict(extra="forbid")
    name: str = Field(max_length=24)
    population: int = Field(ge=0, le=10**8)


CITY = City.model_json_schema()


class Capital(BaseModel):
    # The anthropic client moves numeric and length bounds out of the schema it sends (into
    # descriptions), so this answer is bounded by its types alone.
    capital: bool
    continent: Literal["Africa", "America", "Asia", "Europe", "Oceania"]


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> ollama.Client:
    return ollama.Client(host=server.base_url, timeout=120)


@pytest.fixture(scope="module")
def claude(server: ServerProcess) -> anthropic.Anthropic:
    return anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0)


def test_ollama_chat_schema(client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "Tell me about Paris as JSON."}]
    reply = client.chat(MODEL, messages, format=CITY, options=GREEDY)
    assert reply.done_reason == "stop"
    City.model_validate_json(reply.message.content or "")
    parts = list(client.chat(MODEL, messages, format=CITY, options=GREEDY, stream=True))
    assert "".join(p.message.content or "" for p in parts) == reply.message.content
    assert parts[-1].done and parts[-1].done_reason == "stop"


class OpenCity(BaseModel):
    name: str = Field(max_length=24)
    population: int = Field(ge=0, le=10**8)


def test_ollama_schema_objects_are_closed(client: ollama.Client) -> None:
    # As in Ollama, a schema without additionalProperties gets no undeclared keys (SmolLM2
    # adds some here when the schema allows them).
    schema = OpenCity.model_json_schema()
    assert "additionalProperties" not in schema
    messages = [{"role": "user", "content": "Tell me about Paris as JSON."}]
    reply = client.chat(MODEL, messages, format=schema, options=GREEDY)
    assert reply.done_reason == "stop"
    assert set(json.loads(reply.message.content or "")) == {"name", "population"}


def test_ollama_chat_json(client: ollama.Client) -> None:
    messages = [{"role": "user", "content": "Reply in JSON."}]
    reply = client.chat(MODEL, messages, format="json", options={**GREEDY, "num_predict": 8})
    text = reply.message.content or ""
    assert text.startswith("{")
    if reply.done_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:
        assert reply.done_reason == "length"


def test_ollama_generate_schema(client: ollama.Client) -> None:
    schema = {
        "type": "object",
        "properties": {"answer": {"enum": ["yes", "no"]}},
        "required": ["answer"],
        "additionalProperties": False,
    }
    reply = client.generate(MODEL, "Is water wet?", format=schema, options=GREEDY)
    assert reply.done_reason == "stop"
    jsonschema.validate(json.loads(reply.response or ""), schema)
    parts = list(
        client.generate(MODEL, "Is water wet?", format=schema, options=GREEDY, stream=True)
    )
    assert "".join(p.response or "" for p in parts) == reply.response


@pytest.mark.parametrize(
    ("fmt", "message"),
    [
        ({"type": "object", "properties": {"a": {"$ref": "#/$defs/gone"}}}, "invalid JSON schema"),
        ({"type": "string", "pattern": "(a{1000}){1000}"}, "repeats too much"),
        ("xml", "invalid format 'xml'"),
    ],
)
def test_ollama_bad_format(server: ServerProcess, fmt: Any, message: str) -> None:
    for path, body in (
        ("/api/generate", {"prompt": "Hi"}),
        ("/api/chat", {"messages": [{"role": "user", "content": "Hi"}]}),
    ):
        r = httpx.post(
            f"{server.base_url}{path}",
            json={"model": MODEL, "format": fmt, **body, "options": {"num_predict": 2}},
            timeout=60,
        )
        assert r.status_code == 400, r.text
        assert list(r.json()) == ["error"] and message in r.json()["error"]
    ok = httpx.post(
        f"{server.base_url}/api/generate",
        json={
            "model": MODEL,
            "prompt": "Hi",
            "format": "json",
            "stream": False,
            "options": {"num_predict": 2},
        },
        timeout=60,
    )
    assert ok.status_code == 200 and ok.json()["response"].startswith("{")


def test_anthropic_parse(claude: anthropic.Anthropic) -> None:
    message = claude.messages.parse(
        model=MODEL,
        max_tokens=80,
        extra_body=CLAUDE_GREEDY,
        messages=[{"role": "user", "content": "Is Rome a capital? Answer as JSON."}],
        output_format=Capital,
    )
    assert message.stop_reason == "end_turn"
    assert isinstance(message.parsed_output, Capital)


def test_anthropic_output_config_streamed(claude: anthropic.Anthropic) -> None:
    config: Any = {"format": {"type": "json_schema", "schema": CITY}}
    messages: Any = [{"role": "user", "content": "Tell me about Oslo as JSON."}]
    with claude.messages.stream(
        model=MODEL,
        max_tokens=80,
        messages=messages,
        output_config=config,
        extra_body=CLAUDE_GREEDY,
    ) as stream:
        text = "".join(stream.text_stream)
        final = stream.get_final_message()
    assert final.stop_reason == "end_turn"
    City.model_validate_json(text)
    short = claude.messages.create(
        model=MODEL,
        max_tokens=3,
        messages=messages,
        output_config=config,
        extra_body=CLAUDE_GREEDY,
    )
    assert short.stop_reason == "max_tokens"


@pytest.mark.parametrize(
    ("config", "param", "message"),
    [
        (
            {"format": {"type": "json_schema", "schema": {"type": "nonsense"}}},
            "output_config.format",
            "invalid JSON schema",
        ),
        (
            {
                "format": {
                    "type": "json_schema",
                    "schema": {"type": "string", "pattern": "(a{999}){99}"},
                }
            },
            "output_config.format",
            "repeats too much",
        ),
        ({"format": {"type": "xml", "schema": {}}}, "output_config.format.type", "json_schema"),
        ({"effort": "high"}, "output_config.effort", "not supported"),
    ],
)
def test_anthropic_bad_output_config(
    claude: anthropic.Anthropic, config: Any, param: str, message: str
) -> None:
    with pytest.raises(anthropic.BadRequestError) as info:
        claude.messages.create(
            model=MODEL,
            max_tokens=5,
            messages=[{"role": "user", "content": "Hi"}],
            output_config=config,
        )
    body: Any = info.value.body
    assert body["type"] == "error" and body["error"]["type"] == "invalid_request_error"
    assert message in body["error"]["message"], body
