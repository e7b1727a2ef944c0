"""Structured output through the OpenAI API of a real ``heron serve``: ``response_format``
(with the official client's ``parse``), vLLM's ``structured_outputs`` and ``guided_*``
fields, streaming, and the 400s for constraints that are wrong, too big or too costly."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import openai
import pytest
from pydantic import BaseModel

from tests.server.conftest import ServerProcess

pytestmark = pytest.mark.slow

MODEL = "smollm2"
MESSAGES: Any = [{"role": "user", "content": "Describe a cat as JSON."}]


class Pet(BaseModel):
    name: str
    age: int
    indoor: bool


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def post(server: ServerProcess, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", json=body, timeout=120)


def test_parse_returns_the_model(client: openai.OpenAI) -> None:
    completion = client.chat.completions.parse(
        model=MODEL, messages=MESSAGES, response_format=Pet, temperature=0, max_tokens=80
    )
    choice = completion.choices[0]
    assert choice.finish_reason == "stop"
    assert isinstance(choice.message.parsed, Pet)
    assert Pet.model_validate_json(choice.message.content or "") == choice.message.parsed


def test_beta_parse_if_the_client_has_it(client: openai.OpenAI) -> None:
    beta_chat = getattr(client.beta, "chat", None)
    if beta_chat is None:
        pytest.skip("this openai client has no client.beta.chat")
    completion = beta_chat.completions.parse(
        model=MODEL, messages=MESSAGES, response_format=Pet, temperature=0, max_tokens=80
    )
    assert isinstance(completion.choices[0].message.parsed, Pet)


def test_json_object(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=40,
    )
    choice = completion.choices[0]
    text = choice.message.content or ""
    assert text.startswith("{")
    if choice.finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:
        assert choice.finish_reason == "length"


def test_streamed_json_schema(client: openai.OpenAI) -> None:
    schema = Pet.model_json_schema()
    stream = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        response_format={"type": "json_schema", "json_schema": {"name": "pet", "schema": schema}},
        temperature=0,
        max_tokens=80,
        stream=True,
    )
    text, reasons = "", []
    for chunk in stream:
        for c in chunk.choices:
            text += c.delta.content or ""
            reasons.append(c.finish_reason)
    assert reasons[-1] == "stop"
    Pet.model_validate_json(text)
    # the same request unstreamed gives the same text
    whole = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        response_format={"type": "json_schema", "json_schema": {"name": "pet", "schema": schema}},
        temperature=0,
        max_tokens=80,
    )
    assert whole.choices[0].message.content == text


def test_schema_optional_means_any_object(server: ServerProcess) -> None:
    body = {
        "model": MODEL,
        "messages": MESSAGES,
        "response_format": {"type": "json_schema", "json_schema": {"name": "anything"}},
        "temperature": 0,
        "max_tokens": 5,
    }
    r = post(server, "/v1/chat/completions", body)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"].startswith("{")


def test_completions_guided_regex_and_choice(client: openai.OpenAI) -> None:
    out = client.completions.create(
        model=MODEL,
        prompt="My phone number is",
        max_tokens=20,
        temperature=0,
        extra_body={"guided_regex": r"\d{3}-\d{4}"},
    )
    assert re.fullmatch(r"\d{3}-\d{4}", out.choices[0].text)
    assert out.choices[0].finish_reason == "stop"
    out = client.completions.create(
        model=MODEL,
        prompt="Is the sky blue? Answer:",
        max_tokens=20,
        temperature=0,
        extra_body={"structured_outputs": {"choice": ["yes", "no"]}},
    )
    assert out.choices[0].text in ("yes", "no") and out.choices[0].finish_reason == "stop"


def test_completions_guided_json_streamed(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"n": {"type": "integer", "minimum": 0, "maximum": 9}},
        "required": ["n"],
        "additionalProperties": False,
    }
    stream = client.completions.create(
        model=MODEL,
        prompt="A number as JSON:",
        max_tokens=30,
        temperature=0,
        stream=True,
        extra_body={"guided_json": schema},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert set(json.loads(text)) == {"n"}
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_guided_grammar_and_whitespace(server: ServerProcess) -> None:
    body = {
        "model": MODEL,
        "prompt": "Say:",
        "max_tokens": 10,
        "temperature": 0,
        "guided_grammar": 'root ::= "ab" [0-9]',
        "guided_decoding_backend": "llguidance",
    }
    r = post(server, "/v1/completions", body)
    assert r.status_code == 200, r.text
    assert re.fullmatch(r"ab[0-9]", r.json()["choices"][0]["text"])


def test_truncated_constraint_finishes_with_length(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL,
        messages=MESSAGES,
        response_format={
            "type": "json_schema",
            "json_schema": {
                "name": "pet",
                "schema": {
                    "type": "object",
                    "properties": {"story": {"type": "string", "minLength": 200}},
                    "required": ["story"],
                },
            },
        },
        temperature=0,
        max_tokens=5,
    )
    assert completion.choices[0].finish_reason == "length"
    assert completion.usage is not None and completion.usage.completion_tokens == 5


def deep_schema(levels: int) -> dict[str, Any]:
    schema: dict[str, Any] = {"type": "string"}
    for _ in range(levels):
        schema = {"type": "array", "items": schema}
    return schema


JSON_SCHEMA = "response_format"
BAD_CHAT: list[tuple[str, dict[str, Any], str, str]] = [
    ("not an object", {"response_format": "json"}, "response_format", "valid dictionary"),
    ("unknown type", {"response_format": {"type": "xml"}}, "response_format.type", "json_schema"),
    (
        "json_schema without it",
        {"response_format": {"type": "json_schema"}},
        "response_format.json_schema",
        "needs a json_schema object",
    ),
    (
        "json_schema without a name",
        {"response_format": {"type": "json_schema", "json_schema": {"schema": {}}}},
        "response_format.json_schema.name",
        "Field required",
    ),
    (
        "invalid schema",
        {
            "response_format": {
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "nonsense"}},
            }
        },
        JSON_SCHEMA,
        "invalid JSON schema",
    ),
    (
        "dangling $ref",
        {"guided_json": {"$ref": "#/$defs/missing"}},
        "guided_json",
        "invalid JSON schema",
    ),
    (
        "schema too deep",
        {"guided_json": deep_schema(40)},
        "guided_json",
        "nests deeper than 32 levels",
    ),
    (
        "regex that explodes",
        {"guided_regex": "(a{1000}){1000}"},
        "guided_regex",
        "unroll to more than 10000 characters",
    ),
    (
        "pattern that explodes",
        {"guided_json": {"type": "string", "pattern": "^(x{500}y){500}$"}},
        "guided_json",
        "unroll to more than 10000 characters",
    ),
    ("regex that does not parse", {"guided_regex": "(ab"}, "guided_regex", "invalid regex"),
    ("invalid GBNF", {"guided_grammar": "root ::= missing"}, "guided_grammar", "invalid grammar"),
    (
        "invalid Lark",
        {"structured_outputs": {"grammar": "start: x"}},
        "structured_outputs",
        "invalid grammar",
    ),
    (
        "grammar that explodes",
        {"guided_grammar": 'start: ("a"~1000)~1000'},
        "guided_grammar",
        "the grammar repeats too much",
    ),
    (
        # passes the check without a tokenizer; the engine's compile refuses it (Rejected)
        "unknown special token",
        {"guided_grammar": "start: <|no_such_token|>"},
        "guided_grammar",
        "unknown special token",
    ),
    ("empty choice", {"guided_choice": []}, "guided_choice", "choice must list between 1"),
    (
        "two constraints",
        {"guided_regex": "a", "response_format": {"type": "json_object"}},
        "guided_regex",
        "only one output constraint",
    ),
    (
        "two in structured_outputs",
        {"structured_outputs": {"regex": "a", "choice": ["a"]}},
        "structured_outputs",
        "exactly one of",
    ),
    (
        "unknown structured_outputs key",
        {"structured_outputs": {"json": {}, "disable_fallback": True}},
        "structured_outputs.disable_fallback",
        "unsupported field",
    ),
    (
        "another backend",
        {"guided_decoding_backend": "xgrammar"},
        "guided_decoding_backend",
        "llguidance",
    ),
    (
        "whitespace pattern",
        {"guided_whitespace_pattern": "[ ]*"},
        "guided_whitespace_pattern",
        "not supported",
    ),
]


@pytest.mark.parametrize(
    ("extra", "param", "message"), [pytest.param(e, p, m, id=i) for i, e, p, m in BAD_CHAT]
)
def test_bad_constraints_are_400s(
    server: ServerProcess, extra: dict[str, Any], param: str, message: str
) -> None:
    body = {"model": MODEL, "messages": MESSAGES, "max_tokens": 5, **extra}
    for path, base in (("/v1/chat/completions", {}), ("/v1/completions", {"prompt": "x"})):
        if path == "/v1/completions":
            body = {k: v for k, v in body.items() if k != "messages"} | base
        r = post(server, path, {**body, "stream": True})
        assert r.status_code == 400, r.text
        err = r.json()["error"]
        assert err["param"] == param and message in err["message"], err
    # the server is still healthy: a constrained request right after succeeds
    ok = post(
        server,
        "/v1/completions",
        {"model": MODEL, "prompt": "x", "max_tokens": 3, "guided_choice": ["fine"]},
    )
    assert ok.status_code == 200 and ok.json()["choices"][0]["text"] == "fine"


def test_official_client_names_the_bad_schema(client: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model=MODEL,
            messages=MESSAGES,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "x", "schema": {"type": "object", "minProperties": "two"}},
            },
        )
    assert info.value.status_code == 400 and info.value.param == "response_format"
