"""Ollama's ``format`` -> the engine's constraint, without a server: "json" is any object,
a schema is the constraint, other strings are 400s."""

from __future__ import annotations

import json

import pytest

from heron.server.common import APIError
from heron.server.ollama.options import output_format


def test_json_and_free_text() -> None:
    assert output_format(None) is None and output_format("") is None
    constraint = output_format("json")
    assert constraint is not None and constraint.json_object
    with pytest.raises(APIError) as info:
        output_format("yaml")
    assert info.value.status == 400 and info.value.param == "format"
    assert info.value.message == "invalid format 'yaml': use \"json\" or a JSON schema object"


def test_a_schema_is_the_constraint() -> None:
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}}
    constraint = output_format(schema)
    # closed like Ollama's grammar by the engine layer: tests/structured/test_schema.py
    assert constraint is not None and json.loads(constraint.json or "") == schema  # type: ignore[arg-type]


def test_a_schema_too_deep_is_a_400_before_any_walk() -> None:
    schema: dict[str, object] = {"type": "string"}
    for _ in range(5000):  # deeper than Python's recursion limit
        schema = {"not": schema}
    with pytest.raises(APIError) as info:
        output_format(schema)
    assert info.value.status == 400 and info.value.param == "format"
    assert info.value.message == "the JSON schema nests deeper than 32 levels"
