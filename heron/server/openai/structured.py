"""OpenAI's and vLLM's ways of asking for structured output, and their one translation.

A chat or completions request may constrain its output with exactly one of:

- OpenAI's ``response_format``: ``{"type": "json_object"}`` (any JSON object) or
  ``{"type": "json_schema", "json_schema": {"name", "schema", "strict", "description"}}``
  (no ``schema``: any JSON object); ``{"type": "text"}`` constrains nothing;
- vLLM's ``structured_outputs``: ``{"json" | "json_object" | "regex" | "choice" |
  "grammar": ..., "whitespace": "minimal" | "flexible"}`` (other keys are a 400);
- vLLM's older ``guided_json``, ``guided_regex``, ``guided_choice`` or ``guided_grammar``.

``structured_outputs`` turns whichever is set into the engine's ``StructuredOutputsParams``
for chat and completions alike; two constraints in one request are a 400. Whether the
constraint compiles is checked by the engine client (off the event loop); its ValueError
comes back as a 400 naming ``constraint_field``.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from heron.server.common import APIError
from heron.structured import StructuredOutputsParams

# The grammar engines a client may name: Heron's is llguidance ("auto" picks it).
_BACKENDS = ("auto", "llguidance", "guidance")
_GUIDED = ("guided_json", "guided_regex", "guided_choice", "guided_grammar")


class _Strict(BaseModel):
    model_config = ConfigDict(
        extra="forbid", strict=True, allow_inf_nan=False, populate_by_name=True
    )


class JSONSchemaFormat(_Strict):
    name: str = Field(
        pattern=r"^[a-zA-Z0-9_-]{1,64}$", description="The format's name (required by OpenAI)."
    )
    description: str | None = None
    schema_: dict[str, Any] | None = Field(
        None, alias="schema", description="A JSON schema; without one, any JSON object."
    )
    strict: bool | None = Field(None, description="Accepted; the schema is always enforced.")


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JSONSchemaFormat | None = Field(None, description="With type json_schema.")


class StructuredOutputs(_Strict):
    """vLLM's ``structured_outputs``: set exactly one of the constraints."""

    json_: dict[str, Any] | str | None = Field(None, alias="json", description="A JSON schema.")
    json_object: bool | None = Field(None, description="true: any JSON object.")
    regex: str | None = None
    choice: list[str] | None = Field(None, description="The output is one of these strings.")
    grammar: str | None = Field(None, description="A Lark or GBNF grammar.")
    whitespace: Literal["minimal", "flexible"] | None = Field(
        None, description="Whitespace inside JSON: minimal (the default) or flexible."
    )


class StructuredFields(BaseModel):
    """The request fields that constrain the output (mixed into chat and completions)."""

    response_format: ResponseFormat | None = Field(
        None, description="text, json_object, or json_schema."
    )
    structured_outputs: StructuredOutputs | None = Field(None, description="vLLM's constraint.")
    guided_json: dict[str, Any] | str | None = Field(None, description="vLLM: a JSON schema.")
    guided_regex: str | None = Field(None, description="vLLM: a regular expression.")
    guided_choice: list[str] | None = Field(None, description="vLLM: one of these strings.")
    guided_grammar: str | None = Field(None, description="vLLM: a Lark or GBNF grammar.")
    guided_decoding_backend: str | None = Field(None, description="Only llguidance (or auto).")
    guided_whitespace_pattern: str | None = Field(None, description="Not supported.")


def constraint_fields(body: StructuredFields) -> list[str]:
    """The request fields that set an output constraint, in the order they are read."""
    names = [name for name in _GUIDED if getattr(body, name) is not None]
    if body.structured_outputs is not None:
        names.insert(0, "structured_outputs")
    if body.response_format is not None and body.response_format.type != "text":
        names.insert(0, "response_format")
    return names


def _bad(message: str, param: str) -> APIError:
    return APIError(400, message, "invalid_request", param)


def _from_response_format(rf: ResponseFormat) -> dict[str, Any]:
    if rf.type == "json_object":
        if rf.json_schema is not None:
            raise _bad("json_schema is only allowed with type 'json_schema'", "response_format")
        return {"json_object": True}
    if rf.json_schema is None:
        raise _bad(
            "response_format of type 'json_schema' needs a json_schema object",
            "response_format.json_schema",
        )
    schema = rf.json_schema.schema_
    return {"json_object": True} if schema is None else {"json": schema}


def _from_structured_outputs(so: StructuredOutputs) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "json": so.json_,
        "json_object": bool(so.json_object),
        "regex": so.regex,
        "choice": so.choice,
        "grammar": so.grammar,
    }
    if so.whitespace is not None:
        kwargs["whitespace"] = so.whitespace
    return kwargs


def structured_outputs(body: StructuredFields) -> StructuredOutputsParams | None:
    """The request's output constraint, or None. Raises APIError (400) for two constraints,
    a malformed one, or an option Heron does not implement."""
    if body.guided_whitespace_pattern is not None:
        raise _bad(
            "guided_whitespace_pattern is not supported; use structured_outputs.whitespace "
            "('minimal' or 'flexible')",
            "guided_whitespace_pattern",
        )
    backend = body.guided_decoding_backend
    if backend is not None and backend not in _BACKENDS:
        raise _bad(
            f"guided_decoding_backend {backend[:64]!r} is not available; Heron's grammar "
            "engine is llguidance",
            "guided_decoding_backend",
        )
    if body.response_format is not None and body.response_format.type == "text":
        if body.response_format.json_schema is not None:
            raise _bad("json_schema is only allowed with type 'json_schema'", "response_format")
    fields = constraint_fields(body)
    if not fields:
        return None
    if len(fields) > 1:
        raise _bad(
            f"only one output constraint per request is allowed, got {', '.join(fields)}",
            fields[1],
        )
    field = fields[0]
    if field == "response_format":
        assert body.response_format is not None
        kwargs = _from_response_format(body.response_format)
    elif field == "structured_outputs":
        assert body.structured_outputs is not None
        kwargs = _from_structured_outputs(body.structured_outputs)
    else:
        kwargs = {field.removeprefix("guided_"): getattr(body, field)}
    try:
        return StructuredOutputsParams(**kwargs)
    except ValueError as exc:
        raise _bad(str(exc), field) from None
