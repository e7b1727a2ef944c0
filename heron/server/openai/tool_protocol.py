"""OpenAI's tool-calling fields, with OpenAI's names: the request's ``tools`` and
``tool_choice``, an assistant message's ``tool_calls``, and the calls in replies (whole in
a message, in pieces in a streamed delta)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


# --------------------------------------------------------------------------- requests
class FunctionDefinition(_Request):
    name: str = Field(description="1 to 64 of a-z, A-Z, 0-9, '_', '.', '-'.")
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="A JSON schema of an object.")
    strict: bool | None = Field(None, description="Accepted; arguments always match the schema.")


class ChatTool(_Request):
    type: Literal["function"]
    function: FunctionDefinition


class ToolName(_Request):
    name: str


class NamedToolChoice(_Request):
    type: Literal["function"]
    function: ToolName


ToolChoiceField = Literal["none", "auto", "required"] | NamedToolChoice | None


class FunctionCall(_Request):
    name: str
    arguments: str = Field(description="The arguments as a JSON object in text.")


class MessageToolCall(_Request):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


# -------------------------------------------------------------------------- responses
class CalledFunction(_Response):
    name: str
    arguments: str


class ToolCallOut(_Response):
    id: str
    type: Literal["function"] = "function"
    function: CalledFunction


class FunctionDelta(_Response):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(_Response):
    """A piece of a streamed call: the first has ``id``, ``type`` and the name (and empty
    arguments); the rest only argument text."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: FunctionDelta
