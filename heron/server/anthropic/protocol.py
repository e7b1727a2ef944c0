"""Pydantic models of Anthropic's Messages API, with Anthropic's field names.

Request models forbid unknown fields, so anything Heron does not implement
(``service_tier``, ...) is a 400 that names the field rather than being dropped. Content blocks
other than ``text`` (images, documents) are refused the same way; an assistant's ``thinking``,
``redacted_thinking`` and ``tool_use`` blocks and a user's ``tool_result`` blocks are accepted
in the history. ``cache_control`` markers are accepted: Heron's prefix cache reuses any
repeated prompt prefix on its own, so a marker changes nothing about the result.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticCustomError

from heron.server.sampling import EngineFields

StopReason = Literal[
    "end_turn", "max_tokens", "stop_sequence", "tool_use", "model_context_window_exceeded"
]


def _valid_unicode(text: str) -> str:
    """JSON can carry lone surrogates ("\\ud800"), which are not text and cannot be tokenized."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError(
            "invalid_unicode", "text must be valid Unicode (it has a lone surrogate)"
        ) from None
    return text


Text = Annotated[str, AfterValidator(_valid_unicode)]


class _Request(BaseModel):
    # strict: "10" is not a number and 1 is not a boolean, as in Anthropic's API
    model_config = ConfigDict(extra="forbid", strict=True)


# -------------------------------------------------------------------------- requests
class CacheControlEphemeral(_Request):
    type: Literal["ephemeral"]
    ttl: Literal["5m", "1h"] | None = None


class TextBlockParam(_Request):
    type: Literal["text"]
    text: Text
    cache_control: CacheControlEphemeral | None = None
    citations: list[dict[str, Any]] | None = Field(
        default=None, description="Not supported: only null or an empty list is accepted."
    )


class ThinkingBlockParam(_Request):
    """A thinking block of an earlier reply (its signature is not checked: Heron's are
    digests, not proofs)."""

    type: Literal["thinking"]
    thinking: Text
    signature: str


class RedactedThinkingBlockParam(_Request):
    type: Literal["redacted_thinking"]
    data: str


class DirectCaller(_Request):
    type: Literal["direct"]


class ToolUseBlockParam(_Request):
    """A tool call of an earlier reply (assistant messages)."""

    type: Literal["tool_use"]
    id: str = Field(min_length=1)
    name: str
    input: dict[str, Any]
    cache_control: CacheControlEphemeral | None = None
    caller: DirectCaller | None = Field(None, description="Only the model's own calls.")


class ToolResultBlockParam(_Request):
    """A tool's result (user messages): ``tool_use_id`` names the call it answers."""

    type: Literal["tool_result"]
    tool_use_id: str = Field(min_length=1)
    content: str | list[TextBlockParam] | None = None
    is_error: bool | None = None
    cache_control: CacheControlEphemeral | None = None


_HISTORY_BLOCKS: dict[str, type[BaseModel]] = {
    "thinking": ThinkingBlockParam,
    "redacted_thinking": RedactedThinkingBlockParam,
    "tool_use": ToolUseBlockParam,
    "tool_result": ToolResultBlockParam,
}
_NO_BLOCKS: dict[str, type[BaseModel]] = {}


def _message_content(value: Any) -> Any:
    return _text_content(value, _HISTORY_BLOCKS)


def _text_content(value: Any, extra: dict[str, type[BaseModel]] = _NO_BLOCKS) -> Any:
    """Check a content list block by block, so that the error names the block and its problem
    (an unsupported type, or a bad field) instead of only saying that it is not a string.
    ``extra``: the block types besides text that are allowed here."""
    if value is None:
        return value
    if isinstance(value, str):
        return _valid_unicode(value)
    if not isinstance(value, list):
        raise PydanticCustomError("content_type", "must be a string or a list of text blocks")
    for i, block in enumerate(value):
        kind = block.get("type") if isinstance(block, dict) else None
        if isinstance(kind, str) and kind != "text" and kind not in extra:
            raise PydanticCustomError(
                "unsupported",
                "content block {index} has type '{kind}', which is not supported; only text "
                "blocks are",
                {"index": i, "kind": kind[:64]},
            )
        if isinstance(block, dict) and block.get("citations"):
            raise PydanticCustomError(
                "unsupported", "content block {index}: citations are not supported", {"index": i}
            )
        try:
            # ``type`` may be anything (a dict is unhashable): only a string picks a model
            model = extra.get(kind, TextBlockParam) if isinstance(kind, str) else TextBlockParam
            model.model_validate(block)
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise PydanticCustomError(
                "invalid_block",
                "content block {index}: {msg}{where}",
                {"index": i, "msg": first["msg"], "where": f" ({where})" if where else ""},
            ) from None
    return value


ContentBlockParam = Annotated[
    TextBlockParam
    | ThinkingBlockParam
    | RedactedThinkingBlockParam
    | ToolUseBlockParam
    | ToolResultBlockParam,
    Field(discriminator="type"),
]


class ThinkingEnabled(_Request):
    type: Literal["enabled"]
    budget_tokens: int = Field(ge=1024, description="Advisory: max_tokens bounds the reply.")
    display: Literal["summarized"] | None = None


class ThinkingOther(_Request):
    type: Literal["disabled", "adaptive"]
    display: Literal["summarized"] | None = None


class MessageParam(_Request):
    role: Literal["user", "assistant"]
    content: str | list[ContentBlockParam]

    @field_validator("role", mode="before")
    @classmethod
    def _role(cls, value: Any) -> Any:
        if value == "system":
            raise PydanticCustomError(
                "unsupported",
                "role 'system' is not supported inside messages; use the top-level system "
                "parameter",
            )
        return value

    _content = field_validator("content", mode="before")(_message_content)


class Metadata(_Request):
    user_id: str | None = None


class ToolParam(_Request):
    name: str = Field(description="1 to 64 of a-z, A-Z, 0-9, '_', '.', '-'.")
    description: str | None = None
    input_schema: dict[str, Any] = Field(description="A JSON schema of an object.")
    type: Literal["custom"] | None = None
    cache_control: CacheControlEphemeral | None = None


class ToolChoiceParam(_Request):
    type: Literal["auto", "any", "tool", "none"]
    name: str | None = Field(None, description="With type tool: the tool to call.")
    disable_parallel_tool_use: bool | None = Field(None, description="At most one call.")


class _Conversation(_Request):
    model: str
    messages: list[MessageParam] = Field(min_length=1)
    system: str | list[TextBlockParam] | None = None
    cache_control: CacheControlEphemeral | None = None
    tools: list[ToolParam] | None = Field(None, description="Tools the model may call.")
    tool_choice: ToolChoiceParam | None = Field(None, description="Default auto (with tools).")

    _system = field_validator("system", mode="before")(_text_content)


class JSONOutputFormat(_Request):
    type: Literal["json_schema"]
    schema_: dict[str, Any] = Field(alias="schema", description="The reply's JSON schema.")


class OutputConfig(_Request):
    format: JSONOutputFormat | None = Field(
        default=None, description="Constrain the reply's text to a JSON schema."
    )
    effort: str | None = Field(default=None, description="Not supported: only null.")


class MessageCreateRequest(_Conversation, EngineFields):
    """``POST /v1/messages`` (with the engine's fields, from ``EngineFields``)."""

    max_tokens: int = Field(ge=1)
    stop_sequences: list[str] | None = None
    stream: bool = False
    temperature: float | None = Field(default=None, ge=0.0, le=1.0, allow_inf_nan=False)
    top_p: float | None = Field(default=None, gt=0.0, le=1.0, allow_inf_nan=False)
    top_k: int | None = Field(default=None, ge=0)
    metadata: Metadata | None = None
    output_config: OutputConfig | None = None
    thinking: ThinkingEnabled | ThinkingOther | None = Field(
        default=None, description="Whether a thinking model thinks (unset: its default)."
    )


class CountTokensRequest(_Conversation):
    """``POST /v1/messages/count_tokens``."""

    thinking: ThinkingEnabled | ThinkingOther | None = None  # the prompt as that request's


# ------------------------------------------------------------------------- responses
class TextBlock(BaseModel):
    type: Literal["text"] = "text"
    text: str


class ThinkingBlock(BaseModel):
    type: Literal["thinking"] = "thinking"
    thinking: str
    signature: str = ""  # a digest of the thinking; sent when the block ends when streamed


class ToolUseBlock(BaseModel):
    type: Literal["tool_use"] = "tool_use"
    id: str
    name: str
    input: dict[str, Any]


class Usage(BaseModel):
    """``input_tokens`` are the prompt tokens computed for this request; those served from
    the prefix cache are ``cache_read_input_tokens``. Their sum is the whole prompt."""

    input_tokens: int
    output_tokens: int
    cache_creation_input_tokens: int = 0
    cache_read_input_tokens: int = 0


class Message(BaseModel):
    id: str
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    model: str
    content: list[TextBlock | ThinkingBlock | ToolUseBlock]
    stop_reason: StopReason | None
    stop_sequence: str | None
    usage: Usage


class MessageTokensCount(BaseModel):
    input_tokens: int


# ------------------------------------------------------------------- stream events
class MessageStartEvent(BaseModel):
    type: Literal["message_start"] = "message_start"
    message: Message


class ContentBlockStartEvent(BaseModel):
    type: Literal["content_block_start"] = "content_block_start"
    index: int
    content_block: TextBlock | ThinkingBlock | ToolUseBlock


class TextDelta(BaseModel):
    type: Literal["text_delta"] = "text_delta"
    text: str


class ThinkingDelta(BaseModel):
    type: Literal["thinking_delta"] = "thinking_delta"
    thinking: str


class SignatureDelta(BaseModel):
    type: Literal["signature_delta"] = "signature_delta"
    signature: str


class InputJSONDelta(BaseModel):
    type: Literal["input_json_delta"] = "input_json_delta"
    partial_json: str


class ContentBlockDeltaEvent(BaseModel):
    type: Literal["content_block_delta"] = "content_block_delta"
    index: int
    delta: TextDelta | ThinkingDelta | SignatureDelta | InputJSONDelta


class ContentBlockStopEvent(BaseModel):
    type: Literal["content_block_stop"] = "content_block_stop"
    index: int


class MessageDelta(BaseModel):
    stop_reason: StopReason | None
    stop_sequence: str | None


class MessageDeltaUsage(BaseModel):
    output_tokens: int


class MessageDeltaEvent(BaseModel):
    type: Literal["message_delta"] = "message_delta"
    delta: MessageDelta
    usage: MessageDeltaUsage


class MessageStopEvent(BaseModel):
    type: Literal["message_stop"] = "message_stop"


class PingEvent(BaseModel):
    type: Literal["ping"] = "ping"
