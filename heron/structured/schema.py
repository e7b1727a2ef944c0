"""JSON-schema rewrites applied before a schema becomes a grammar.

``closed_objects``: an object schema that lists ``properties`` and says nothing of
``additionalProperties`` is closed (``additionalProperties: false``). JSON Schema would let
the model add keys of its own, and a small model does (it copies the schema into its
answer); Ollama's and vLLM's grammar compilers close such objects too. Every answer of the
closed schema still validates against the original one.
"""

from __future__ import annotations

from typing import Any

# Keywords whose value is one subschema, a list of them, or a map of names to them.
# ``allOf`` is not entered: closing each branch would refuse the keys the others add.
_ONE = ("additionalProperties", "items", "not", "if", "then", "else", "contains")
_LIST = ("anyOf", "oneOf", "prefixItems", "items")
_MAP = ("properties", "patternProperties", "$defs", "definitions", "dependentSchemas")


def closed_objects(schema: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``schema`` (nested at most ``MAX_SCHEMA_DEPTH``: the caller checked) in which
    every object schema with ``properties``, no ``additionalProperties`` and no
    ``patternProperties`` has ``additionalProperties: false``."""
    out = dict(schema)
    if "properties" in out and not ({"additionalProperties", "patternProperties"} & out.keys()):
        out["additionalProperties"] = False
    for key in _ONE:
        if isinstance(out.get(key), dict):
            out[key] = closed_objects(out[key])
    for key in _LIST:
        if isinstance(out.get(key), list):
            out[key] = [closed_objects(s) if isinstance(s, dict) else s for s in out[key]]
    for key in _MAP:
        if isinstance(out.get(key), dict):
            out[key] = {
                k: closed_objects(v) if isinstance(v, dict) else v for k, v in out[key].items()
            }
    return out
