"""The validation matrix: at temperature 0, through the OpenAI API of a real ``heron serve``,
every answer to a schema-constrained request that finishes with "stop" validates against its
schema (``jsonschema``), for schemas that cover required and optional properties, array
bounds, enum, const, anyOf, nullable types, ``$ref``/``$defs``, string patterns, numeric
bounds and nested objects. The schemas are closed (``additionalProperties: false``) and
bounded, so that SmolLM2 finishes each one within the budget: all of them stop.

The requests run concurrently (one batch in the engine); greedy output does not depend on
the batch, so this checks the same answers as one request at a time, in less time."""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import jsonschema
import openai
import pytest

from tests.server.conftest import ServerProcess

pytestmark = pytest.mark.slow

S = {"type": "string", "maxLength": 16}
SCHEMAS: dict[str, dict[str, Any]] = {
    "required and optional": {
        "type": "object",
        "properties": {
            "title": S,
            "year": {"type": "integer", "minimum": 1900, "maximum": 2030},
            "subtitle": S,
        },
        "required": ["title", "year"],
        "additionalProperties": False,
    },
    "array bounds": {
        "type": "object",
        "properties": {"tags": {"type": "array", "items": S, "minItems": 2, "maxItems": 3}},
        "required": ["tags"],
        "additionalProperties": False,
    },
    "enum": {
        "type": "object",
        "properties": {
            "colour": {"enum": ["red", "green", "blue"]},
            "size": {"enum": [1, 2, 3, None]},
        },
        "required": ["colour", "size"],
        "additionalProperties": False,
    },
    "const": {
        "type": "object",
        "properties": {"version": {"const": "v1"}, "ok": {"type": "boolean"}},
        "required": ["version", "ok"],
        "additionalProperties": False,
    },
    "anyOf": {
        "type": "object",
        "properties": {
            "id": {
                "anyOf": [
                    {"type": "integer", "minimum": 0, "maximum": 999},
                    {"type": "string", "pattern": "^[a-z]{3}$"},
                ]
            }
        },
        "required": ["id"],
        "additionalProperties": False,
    },
    "nullable": {
        "type": "object",
        "properties": {
            "nickname": {"type": ["string", "null"], "maxLength": 12},
            "age": {"type": ["integer", "null"], "minimum": 0, "maximum": 150},
        },
        "required": ["nickname", "age"],
        "additionalProperties": False,
    },
    "$ref and $defs": {
        "$defs": {
            "point": {
                "type": "object",
                "properties": {
                    "x": {"type": "integer", "minimum": -9, "maximum": 9},
                    "y": {"type": "integer", "minimum": -9, "maximum": 9},
                },
                "required": ["x", "y"],
                "additionalProperties": False,
            }
        },
        "type": "object",
        "properties": {"start": {"$ref": "#/$defs/point"}, "end": {"$ref": "#/$defs/point"}},
        "required": ["start", "end"],
        "additionalProperties": False,
    },
    "pattern": {
        "type": "object",
        "properties": {
            "zip": {"type": "string", "pattern": "^[0-9]{5}$"},
            "code": {"type": "string", "pattern": "^[A-Z]{2}-[0-9]{2}$"},
        },
        "required": ["zip", "code"],
        "additionalProperties": False,
    },
    "numeric bounds": {
        "type": "object",
        "properties": {
            "score": {"type": "number", "minimum": 0, "maximum": 10},
            "count": {"type": "integer", "minimum": 5, "maximum": 7},
        },
        "required": ["score", "count"],
        "additionalProperties": False,
    },
    "nested objects": {
        "type": "object",
        "properties": {
            "user": {
                "type": "object",
                "properties": {
                    "name": S,
                    "address": {
                        "type": "object",
                        "properties": {
                            "city": S,
                            "zip": {"type": "string", "pattern": "^[0-9]{4}$"},
                        },
                        "required": ["city", "zip"],
                        "additionalProperties": False,
                    },
                },
                "required": ["name", "address"],
                "additionalProperties": False,
            },
        },
        "required": ["user"],
        "additionalProperties": False,
    },
    "array of objects": {
        "type": "array",
        "items": {
            "type": "object",
            "properties": {
                "sku": {"type": "string", "pattern": "^[A-Z]{3}[0-9]{2}$"},
                "qty": {"type": "integer", "minimum": 1, "maximum": 9},
            },
            "required": ["sku", "qty"],
            "additionalProperties": False,
        },
        "minItems": 1,
        "maxItems": 2,
    },
}


@pytest.fixture(scope="module")
def answers(server: ServerProcess) -> dict[str, tuple[str, str | None]]:
    """Each schema's (text, finish_reason), from concurrent chat completions."""
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)

    def ask(name: str) -> tuple[str, str | None]:
        completion = client.chat.completions.create(
            model="smollm2",
            messages=[{"role": "user", "content": f"Give an example of {name} data as JSON."}],
            temperature=0,
            max_tokens=150,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "example", "schema": SCHEMAS[name], "strict": True},
            },
            timeout=600,
        )
        choice = completion.choices[0]
        return choice.message.content or "", choice.finish_reason

    with ThreadPoolExecutor(len(SCHEMAS)) as pool:
        return dict(zip(SCHEMAS, pool.map(ask, SCHEMAS), strict=True))


@pytest.mark.parametrize("name", list(SCHEMAS))
def test_a_stopped_answer_validates(answers: dict[str, tuple[str, str | None]], name: str) -> None:
    text, reason = answers[name]
    assert reason in ("stop", "length")
    if reason == "stop":
        jsonschema.validate(json.loads(text), SCHEMAS[name])


def test_every_answer_stops(answers: dict[str, tuple[str, str | None]]) -> None:
    stopped = [name for name, (_, reason) in answers.items() if reason == "stop"]
    assert len(stopped) == len(SCHEMAS), answers
