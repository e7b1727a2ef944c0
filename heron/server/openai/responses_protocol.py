"""Request and response bodies of OpenAI's Responses API (``POST /v1/responses``), with
OpenAI's field names.

The request is strict and forbids unknown fields, like chat completions: a parameter Heron
does not implement is a 400 naming it. Input items and tools of kinds Heron does not serve
(images, files, audio, reasoning items, built-in tools such as ``web_search``) are refused
by name before the item models are tried, so the 400 says what is unsupported rather than
listing every member of a union. Items echoed back from an earlier response (``id``,
``status``, ``annotations``) are accepted, as the OpenAI Agents SDK sends them.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Discriminator,
    Field,
    Tag,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
)
from pydantic_core import PydanticCustomError

from heron.server.openai.protocol import Temperature, TopP, _Request
from heron.server.sampling import EngineFields

MAX_METADATA_KEYS = 16
_ITEM_TYPES = ("message", "function_call", "function_call_output", "reasoning")
_CONTENT_TYPES = ("input_text", "output_text")


def _unsupported(message: str) -> PydanticCustomError:
    return PydanticCustomError("unsupported", message)


# ------------------------------------------------------------------------------ input
def _item_error(exc: ValidationError) -> str:
    """The first problem with a list of input items, where it is (``input.2.content``),
    without the union members pydantic tried on the way."""
    errors = [e for e in exc.errors() if e["loc"][:1] != ("str",)] or exc.errors()
    error = errors[0]
    where = [str(p) for p in error["loc"][1:] if p not in _ITEM_TYPES]
    return f"{error['msg']} (at input.{'.'.join(where)})"


class ContentPart(_Request):
    """Text of a message: ``input_text``, or ``output_text`` from an earlier response."""

    type: Literal["input_text", "output_text"]
    text: str
    annotations: list[Any] | None = None  # echoed from an earlier output; must be empty
    logprobs: list[Any] | None = None  # echoed from an earlier output; ignored as input


class MessageItem(_Request):
    type: Literal["message"] = "message"
    role: Literal["user", "system", "developer", "assistant"]
    content: str | list[ContentPart]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    phase: Literal["commentary", "final_answer"] | None = None

    @field_validator("content", mode="before")
    @classmethod
    def _content(cls, value: Any) -> Any:
        for part in value if isinstance(value, list) else []:
            kind = part.get("type") if isinstance(part, dict) else None
            if kind not in _CONTENT_TYPES:
                raise _unsupported(
                    f"content of type {kind!r} is not supported; only input_text and "
                    "output_text are (no images, files or audio)"
                )
        return value


class FunctionCallItem(_Request):
    """A call the model made earlier, sent back with its result."""

    type: Literal["function_call"]
    call_id: str
    name: str
    arguments: str
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallOutputItem(_Request):
    """The result of a function call, for the model to read."""

    type: Literal["function_call_output"]
    call_id: str
    output: str | list[ContentPart]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class ReasoningText(_Request):
    type: Literal["reasoning_text", "summary_text"]
    text: str


class ReasoningItem(_Request):
    """A thinking model's reasoning from an earlier response, sent back (the Agents SDK
    does): it goes with the assistant turn that follows it."""

    type: Literal["reasoning"]
    id: str | None = None
    summary: list[ReasoningText] = Field(default_factory=list)
    content: list[ReasoningText] | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


def _item_type(value: Any) -> Any:
    if isinstance(value, dict):
        return value.get("type", "message")
    return getattr(value, "type", None)


# Tagged by ``type`` (a message may leave it out), so that a bad item's errors are its own.
InputItem = Annotated[
    Annotated[MessageItem, Tag("message")]
    | Annotated[FunctionCallItem, Tag("function_call")]
    | Annotated[FunctionCallOutputItem, Tag("function_call_output")]
    | Annotated[ReasoningItem, Tag("reasoning")],
    Discriminator(_item_type),
]


# ------------------------------------------------------------------------------ tools
class FunctionTool(_Request):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=128)
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolChoiceFunction(_Request):
    type: Literal["function"]
    name: str


ToolChoice = Literal["none", "auto", "required"] | ToolChoiceFunction


# ------------------------------------------------------------------------------- text
class TextFormat(_Request):
    """``text``, ``json_object``, or ``json_schema`` with ``name`` and ``schema``."""

    model_config = ConfigDict(extra="forbid", strict=True, populate_by_name=True)

    type: Literal["text", "json_object", "json_schema"]
    name: str | None = Field(None, max_length=64)
    schema_: dict[str, Any] | None = Field(None, alias="schema")
    description: str | None = None
    strict: bool | None = None


class TextConfig(_Request):
    format: TextFormat | None = None


class ReasoningConfig(_Request):
    effort: Literal["none", "minimal", "low", "medium", "high", "xhigh"] | None = None
    summary: Literal["auto", "concise", "detailed"] | None = None
    generate_summary: Literal["auto", "concise", "detailed"] | None = None


# ---------------------------------------------------------------------------- request
class ResponseCreateRequest(_Request, EngineFields):
    model: str = Field(description="The served model's name (see GET /v1/models).")
    input: str | list[InputItem] = Field(
        description="Text, or a list of messages, function calls and their outputs."
    )
    instructions: str | None = Field(None, description="A system message put first.")
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: Temperature = None
    top_p: TopP = None
    stream: bool | None = None
    metadata: dict[str, str] | None = Field(None, description="Up to 16 pairs, echoed back.")
    user: str | None = Field(None, description="End-user id; accepted and not used.")
    parallel_tool_calls: bool | None = None
    tool_choice: ToolChoice | None = None
    tools: list[FunctionTool] | None = Field(None, description="Function tools only.")
    text: TextConfig | None = None
    store: bool | None = Field(
        None, description="Default true: kept (bounded, in memory) for retrieval."
    )
    previous_response_id: str | None = Field(None, description="Continue a stored response.")
    reasoning: ReasoningConfig | None = None
    include: list[str] | None = Field(None, description="Only [] is supported.")
    truncation: Literal["auto", "disabled"] | None = None

    @field_validator("input", mode="wrap")
    @classmethod
    def _input(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        for item in value if isinstance(value, list) else []:
            if not isinstance(item, dict):
                raise _unsupported("each input item must be an object")
            kind = item.get("type", "message")
            if kind not in _ITEM_TYPES:
                raise _unsupported(
                    f"input items of type {kind!r} are not supported; only message, "
                    "function_call, function_call_output and reasoning are"
                )
        try:
            return handler(value)
        except ValidationError as exc:
            if not isinstance(value, list):
                raise _unsupported("input must be a string or a list of items") from None
            raise _unsupported(_item_error(exc)) from None

    @field_validator("tools", mode="before")
    @classmethod
    def _tools(cls, value: Any) -> Any:
        for tool in value if isinstance(value, list) else []:
            kind = tool.get("type") if isinstance(tool, dict) else None
            if kind != "function":
                raise _unsupported(
                    f"tools of type {kind!r} are not supported; only function tools are "
                    "(no built-in tools such as web_search, file_search or computer)"
                )
        return value

    @field_validator("tool_choice", mode="wrap")
    @classmethod
    def _tool_choice(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        kind = value.get("type") if isinstance(value, dict) else None
        if kind is not None and kind != "function":
            raise _unsupported(
                f"tool_choice of type {kind!r} is not supported; only function tools are"
            )
        try:
            return handler(value)
        except ValidationError:
            raise _unsupported(
                'tool_choice must be "none", "auto", "required" or '
                '{"type": "function", "name": ...}'
            ) from None

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is not None and (
            len(value) > MAX_METADATA_KEYS
            or any(len(k) > 64 or len(v) > 512 for k, v in value.items())
        ):
            raise _unsupported(
                f"metadata holds at most {MAX_METADATA_KEYS} pairs, keys of at most 64 "
                "characters and values of at most 512"
            )
        return value


# --------------------------------------------------------------------------- response
class _Out(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OutputText(_Out):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(_Out):
    type: Literal["message"] = "message"
    id: str
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"]
    content: list[OutputText]


class OutputFunctionCall(_Out):
    type: Literal["function_call"] = "function_call"
    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed", "incomplete"]


class OutputReasoningText(_Out):
    type: Literal["reasoning_text"] = "reasoning_text"
    text: str


class OutputReasoning(_Out):
    """A thinking model's reasoning, as text (no summary, nothing encrypted)."""

    type: Literal["reasoning"] = "reasoning"
    id: str
    summary: list[Any] = Field(default_factory=list)
    content: list[OutputReasoningText]
    status: Literal["in_progress", "completed", "incomplete"]


OutputItem = OutputMessage | OutputFunctionCall | OutputReasoning


class InputTokensDetails(_Out):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(_Out):
    reasoning_tokens: int = 0


class ResponseUsage(_Out):
    input_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens: int
    output_tokens_details: OutputTokensDetails
    total_tokens: int


class IncompleteDetails(_Out):
    reason: Literal["max_output_tokens"]


class ResponseError(_Out):
    code: str
    message: str


class ResponseObject(_Out):
    """A response, as returned, streamed in the lifecycle events, and stored."""

    id: str
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["in_progress", "completed", "incomplete", "failed"]
    completed_at: int | None = None
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    instructions: str | None = None
    max_output_tokens: int | None = None
    model: str
    output: list[OutputItem] = Field(default_factory=list)
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    reasoning: dict[str, Any] = Field(default_factory=lambda: {"effort": None, "summary": None})
    store: bool = True
    temperature: float | None = None
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    tool_choice: Any = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    top_p: float | None = None
    truncation: Literal["auto", "disabled"] = "disabled"
    usage: ResponseUsage | None = None
    user: str | None = None
    metadata: dict[str, str] = Field(default_factory=dict)


class DeletedResponse(_Out):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


class InputItemList(_Out):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool = False
