"""Request and response bodies of the OpenAI-compatible API, with OpenAI's field names.

Requests are strict (``"max_tokens": "10"`` is a type error, not 10) and forbid unknown fields,
so that a parameter Heron does not implement fails with a 400 naming it instead of being
dropped. Fields that OpenAI defines but Heron supports only in a no-op form (``tools: []``,
``functions: []``, ...) are declared so that the no-op is accepted;
``serving.reject_unsupported`` refuses every other value. vLLM's sampling extensions
(``top_k``, ``min_p``, ``repetition_penalty``, ``min_tokens``, ``ignore_eos``,
``stop_token_ids``, ``include_stop_str_in_output``, ``skip_special_tokens``) are accepted too.

Ranges here are the engine's own (``heron.SamplingParams``), so that the OpenAPI schema states
them; the server's configurable caps (``n``, ``max_tokens``, logprobs, stop strings) are checked
in ``serving``.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidatorFunctionWrapHandler,
    field_validator,
)
from pydantic_core import PydanticCustomError

from heron.sampling_params import MAX_LOGPROBS
from heron.server.openai.structured import StructuredFields
from heron.server.openai.tool_protocol import (
    ChatTool,
    MessageToolCall,
    ToolCallDelta,
    ToolCallOut,
    ToolChoiceField,
)
from heron.server.sampling import EngineFields

INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


def _one_of(value: Any, handler: ValidatorFunctionWrapHandler, message: str) -> Any:
    """Validate a union but report one readable error instead of one per member type."""
    try:
        return handler(value)
    except ValidationError as exc:
        raise PydanticCustomError("invalid_type", message) from exc


# --------------------------------------------------------------------------- shared
Temperature = Annotated[float | None, Field(ge=0.0, le=100.0, description="0 is greedy.")]
TopP = Annotated[float | None, Field(gt=0.0, le=1.0)]
Penalty = Annotated[float | None, Field(ge=-2.0, le=2.0)]
Seed = Annotated[
    int | None,
    Field(ge=INT64_MIN, le=INT64_MAX, description="Makes sampling reproducible."),
]
Stop = str | list[str] | None


class StreamOptions(_Request):
    include_usage: bool | None = Field(
        None, description="Send a last chunk with empty choices and the request's usage."
    )
    continuous_usage_stats: bool | None = Field(
        None, description="With include_usage, every chunk carries the usage so far (vLLM)."
    )


class SamplingFields(_Request, EngineFields, StructuredFields):
    """Sampling parameters both endpoints take (with the engine's, from ``EngineFields``, and
    the output constraints, from ``StructuredFields``)."""

    model: str = Field(description="The served model's name (see GET /v1/models).")
    n: int | None = Field(None, ge=1, description="Choices to generate.")
    temperature: Temperature = None
    top_p: TopP = None
    presence_penalty: Penalty = None
    frequency_penalty: Penalty = None
    seed: Seed = None
    stop: Stop = Field(None, description="Up to the server's cap of stop strings.")
    stream: bool | None = None
    stream_options: StreamOptions | None = None
    user: str | None = Field(None, description="End-user id; accepted and not used.")
    # vLLM extensions
    top_k: int | None = Field(None, ge=-1, description="0 or -1 disables.")
    min_p: float | None = Field(None, ge=0.0, le=1.0)
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)
    # OpenAI fields accepted only in their no-op form
    logit_bias: dict[str, Any] | None = Field(
        None, description="Token id (as a string) -> bias in [-100, 100] added to its logit."
    )

    @field_validator("stop", mode="wrap")
    @classmethod
    def _stop(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        return _one_of(value, handler, "stop must be a string or a list of strings")


# ----------------------------------------------------------------------------- chat
class ChatContentPart(_Request):
    """One part of a message's content. Only ``{"type": "text", "text": ...}`` is supported;
    the other kinds are declared so that they fail with a clear message."""

    type: str
    text: str | None = None
    image_url: Any = None
    input_audio: Any = None
    file: Any = None
    refusal: Any = None


class ChatMessage(_Request):
    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[ChatContentPart] | None = None
    name: str | None = Field(None, description="Passed to the chat template.")
    tool_calls: list[MessageToolCall] | None = Field(None, description="An assistant's calls.")
    tool_call_id: str | None = Field(None, description="The call a tool message answers.")
    reasoning_content: str | None = Field(
        None, description="An assistant's reasoning, passed to the chat template."
    )
    # not supported; declared so that they fail with a clear message
    function_call: Any = None
    refusal: Any = None
    audio: Any = None

    @field_validator("content", mode="wrap")
    @classmethod
    def _content(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        return _one_of(value, handler, "content must be a string or a list of content parts")


ReasoningEffort = Literal["none", "minimal", "low", "medium", "high", "xhigh", "max"]


class ChatTemplateKwargs(_Request):
    """vLLM's ``chat_template_kwargs``: only Qwen3's thinking switch is taken."""

    enable_thinking: bool | None = None


class ChatCompletionRequest(SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(
        None, ge=1, description="Deprecated by OpenAI; the same as max_completion_tokens."
    )
    max_completion_tokens: int | None = Field(
        None, ge=1, description="Default: until the context is full, within the server's cap."
    )
    logprobs: bool | None = Field(None, description="Return the sampled tokens' logprobs.")
    top_logprobs: int | None = Field(
        None, ge=0, le=MAX_LOGPROBS, description="Needs logprobs: true."
    )
    # accepted only in their no-op form
    tools: list[ChatTool] | None = Field(None, description="Functions the model may call.")
    tool_choice: ToolChoiceField = Field(
        None, description='"auto" (default with tools), "none", "required", or a named function.'
    )
    parallel_tool_calls: bool | None = Field(None, description="Default true.")
    reasoning_effort: ReasoningEffort | None = Field(
        None, description='A thinking model thinks ("none": it does not); unset: its default.'
    )
    chat_template_kwargs: ChatTemplateKwargs | None = Field(
        None, description="vLLM's; only enable_thinking (the same as reasoning_effort)."
    )
    functions: list[Any] | None = Field(None, description="Only [] is supported.")


# ---------------------------------------------------------------------- completions
PromptInput = str | list[str] | list[int] | list[list[int]]


class CompletionRequest(SamplingFields):
    prompt: PromptInput = Field(
        description="Text, token ids, or a batch of either (each gets n choices)."
    )
    max_tokens: int | None = Field(
        None,
        ge=0,
        description="Default 16, within the server's cap; 0 only with echo (score the prompt).",
    )
    logprobs: int | None = Field(
        None,
        ge=0,
        le=MAX_LOGPROBS,
        description="Top alternatives per token (0: the sampled token only).",
    )
    echo: bool | None = Field(
        None, description="Prefix the prompt to the text (and its logprobs to the logprobs)."
    )
    # accepted only in their no-op form
    suffix: str | None = Field(None, description='Only "" is supported.')
    best_of: int | None = Field(None, description="Only equal to n is supported.")

    @field_validator("prompt", mode="wrap")
    @classmethod
    def _prompt(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        return _one_of(
            value,
            handler,
            "prompt must be a string, a list of token ids, or a list of either",
        )


# ------------------------------------------------------------------------ responses
class _Response(BaseModel):
    model_config = ConfigDict(extra="forbid")


class PromptTokensDetails(_Response):
    cached_tokens: int = 0


class Usage(_Response):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class TopLogprob(_Response):
    token: str
    logprob: float
    bytes: list[int] | None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob]


class ChatChoiceLogprobs(_Response):
    content: list[TokenLogprob] | None
    refusal: None = None


class AssistantMessage(_Response):
    role: Literal["assistant"] = "assistant"
    content: str | None
    refusal: None = None
    tool_calls: list[ToolCallOut] | None = None
    reasoning_content: str | None = None  # a thinking model's reasoning (vLLM's field)


class ChatCompletionChoice(_Response):
    index: int
    message: AssistantMessage
    logprobs: ChatChoiceLogprobs | None
    finish_reason: str | None
    stop_reason: int | str | None = Field(
        None, description="The stop string or token id that ended the choice (vLLM extension)."
    )


class ChatCompletionResponse(_Response):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage
    system_fingerprint: str | None = None


class ChatDelta(_Response):
    role: Literal["assistant"] | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(_Response):
    index: int
    delta: ChatDelta
    logprobs: ChatChoiceLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionChunk(_Response):
    """One ``data:`` event of a streamed chat completion."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatChunkChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class CompletionLogprobs(_Response):
    """The legacy completions logprobs shape: parallel lists, one entry per token."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(_Response):
    index: int
    text: str
    logprobs: CompletionLogprobs | None
    finish_reason: str | None
    stop_reason: int | str | None = None


class CompletionResponse(_Response):
    """A completion, and also each ``data:`` event of a streamed one."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None
    system_fingerprint: str | None = None


class ModelCard(_Response):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "heron"
    max_model_len: int | None = Field(None, description="Context length in tokens (extension).")
    root: str | None = Field(None, description="A LoRA adapter's path (vLLM's extension).")
    parent: str | None = Field(None, description="A LoRA adapter's base model (vLLM's).")


class ModelList(_Response):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class ErrorDetail(_Response):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(_Response):
    error: ErrorDetail


# ----------------------------------------------------------------------- embeddings
EmbeddingInput = str | list[str] | list[int] | list[list[int]]


class EmbeddingRequest(_Request):
    model: str = Field(description="An embedding model (see GET /v1/models).")
    input: EmbeddingInput = Field(
        description="Text, token ids, or a list of either; up to the server's cap of inputs."
    )
    encoding_format: Literal["float", "base64"] | None = Field(
        None, description="base64: little-endian float32 bytes. Default float."
    )
    dimensions: int | None = Field(
        None, ge=1, description="Only the model's own embedding size is supported."
    )
    user: str | None = Field(None, description="End-user id; accepted and not used.")

    @field_validator("input", mode="wrap")
    @classmethod
    def _input(cls, value: Any, handler: ValidatorFunctionWrapHandler) -> Any:
        return _one_of(
            value, handler, "input must be a string, a list of token ids, or a list of either"
        )


class Embedding(_Response):
    object: Literal["embedding"] = "embedding"
    embedding: list[float] | str = Field(description="Floats, or base64 with base64 encoding.")
    index: int


class EmbeddingUsage(_Response):
    prompt_tokens: int
    total_tokens: int


class EmbeddingResponse(_Response):
    object: Literal["list"] = "list"
    data: list[Embedding]
    model: str
    usage: EmbeddingUsage
