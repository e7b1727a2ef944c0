"""JSON-schema rewrites before compiling: objects that list properties are closed."""

from __future__ import annotations

import json

from heron.structured import StructuredOutputsParams
from heron.structured.schema import closed_objects


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


def test_all_of_branches_stay_open() -> None:
    a = {"type": "object", "properties": {"a": {"type": "integer"}}}
    b = {"type": "object", "properties": {"b": {"type": "integer"}}}
    closed = closed_objects({"allOf": [a, b]})
    assert closed["allOf"] == [a, b]  # closing each would refuse the other's key


def test_json_constraints_compile_closed_and_json_object_stays_open() -> None:
    schema = {"type": "object", "properties": {"x": {"type": "integer"}}}
    grammar = json.loads(StructuredOutputsParams(json=schema).to_grammar())
    assert grammar["grammars"][0]["json_schema"]["additionalProperties"] is False
    anything = json.loads(StructuredOutputsParams(json_object=True).to_grammar())
    assert "additionalProperties" not in anything["grammars"][0]["json_schema"]
