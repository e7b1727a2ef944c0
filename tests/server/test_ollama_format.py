"""Ollama's ``format`` -> the engine's constraint, without a server: "json" is any object,
a schema's objects are closed the way Ollama's grammar reads them, other strings are 400s."""

from __future__ import annotations

import json

import pytest

from heron.server.common import APIError
from heron.server.ollama.options import closed_objects, output_format


def test_json_and_free_text() -> None:
    assert output_format(None) is None and output_format("") is None
    constraint = output_format("json")
    assert constraint is not None and constraint.json_object
    with pytest.raises(APIError) as info:
        output_format("yaml")
    assert info.value.status == 400 and info.value.param == "format"
    assert info.value.message == "invalid format 'yaml': use \"json\" or a JSON schema object"


def test_objects_without_additional_properties_are_closed() -> None:
    point = {"type": "object", "properties": {"x": {"type": "integer"}}}
    schema = {
        "type": "object",
        "properties": {
            "properties": {"type": "string"},  # a property named "properties"
            "at": {"$ref": "#/$defs/point"},
            "path": {"type": "array", "items": point},
            "either": {"anyOf": [point, {"type": "null"}]},
            "open": {"type": "object", "properties": {}, "additionalProperties": True},
            "typed": {"type": "object", "additionalProperties": {"type": "integer"}},
        },
        "$defs": {"point": point},
    }
    closed = closed_objects(schema)
    closed_point = {**point, "additionalProperties": False}
    assert closed["additionalProperties"] is False
    props = closed["properties"]
    assert props["properties"] == {"type": "string"}
    assert closed["$defs"]["point"] == closed_point
    assert props["path"]["items"] == closed_point
    assert props["either"]["anyOf"] == [closed_point, {"type": "null"}]
    assert props["open"]["additionalProperties"] is True
    assert props["typed"] == schema["properties"]["typed"]  # type: ignore[index]
    assert "additionalProperties" not in schema  # the request's schema is not changed
    constraint = output_format(schema)
    assert constraint is not None and json.loads(constraint.json or "") == closed  # type: ignore[arg-type]


def test_a_schema_too_deep_is_a_400_before_any_walk() -> None:
    schema: dict[str, object] = {"type": "string"}
    for _ in range(5000):  # deeper than Python's recursion limit
        schema = {"not": schema}
    with pytest.raises(APIError) as info:
        output_format(schema)
    assert info.value.status == 400 and info.value.param == "format"
    assert info.value.message == "the JSON schema nests deeper than 32 levels"
