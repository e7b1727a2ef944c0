"""Ollama's request and response bodies, with Ollama's field names.

Requests forbid unknown top-level fields (a typo is a 400, never silently ignored); known but
unsupported fields are declared here and rejected with a 400 naming them in ``serving``.
``options`` follows Ollama instead: unknown keys are logged and ignored, a wrong type is a 400.
Numbers are checked strictly: a string is not a number and a bool is not an integer, but an
integral float such as ``8.0`` is accepted where an integer is expected (JSON has one number
type). Responses are built from these models and dumped without ``None`` fields, the way
Ollama's Go structs leave out empty ``omitempty`` fields.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    StrictInt,
    StrictStr,
)

from heron.server.sampling import EngineFields


def _integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


Int = Annotated[StrictInt, BeforeValidator(_integral)]
Float = StrictFloat  # accepts JSON integers too
Bool = StrictBool
Str = StrictStr


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class Options(EngineFields):
    """Ollama's ``options``: the sampling keys Heron maps, the engine's own (``EngineFields``),
    plus runner and removed keys that clients still send, which are accepted and ignored.
    Unknown keys land in ``model_extra``."""

    model_config = ConfigDict(extra="allow")

    # Sampling and length.
    num_ctx: Int | None = None
    num_predict: Int | None = None
    num_keep: Int | None = None
    seed: Int | None = None
    temperature: Float | None = None
    top_k: Int | None = None
    top_p: Float | None = None
    min_p: Float | None = None
    typical_p: Float | None = None
    repeat_last_n: Int | None = None
    repeat_penalty: Float | None = None
    presence_penalty: Float | None = None
    frequency_penalty: Float | None = None
    stop: list[Str] | Str | None = None
    # Runner options: fixed when the model loads; accepted and ignored.
    num_batch: Int | None = None
    num_gpu: Int | None = None
    main_gpu: Int | None = None
    use_mmap: Bool | None = None
    num_thread: Int | None = None
    draft_num_predict: Int | None = None
    # Removed from Ollama but still sent by clients; accepted and ignored.
    numa: Bool | None = None
    low_vram: Bool | None = None
    f16_kv: Bool | None = None
    logits_all: Bool | None = None
    vocab_only: Bool | None = None
    use_mlock: Bool | None = None
    embedding_only: Bool | None = None
    mirostat: Int | None = None  # only 0 (off)
    mirostat_tau: Float | None = None
    mirostat_eta: Float | None = None
    tfs_z: Float | None = None
    penalize_newline: Bool | None = None


KeepAlive = Float | Str | None
Format = Str | dict[str, Any] | None
Think = Bool | Str | None


class GenerateRequest(_Request):
    """``POST /api/generate``."""

    model: Str = ""
    prompt: Str | None = None
    suffix: Str | None = None  # fill-in-the-middle: 400 unless empty
    system: Str | None = None
    template: Str | None = None  # 400 unless empty or the model's own template
    context: list[Int] | None = None  # deprecated: token ids prepended to the prompt
    raw: Bool | None = None
    format: Format = None  # "json" or a JSON schema: constrains the output
    images: list[Str] | None = None  # 400 unless empty: the model has no vision
    options: Options | None = None
    stream: Bool | None = None  # defaults to true
    keep_alive: KeepAlive = None
    think: Think = None  # true/"low"/"medium"/"high": think (400 if the model cannot)
    truncate: Bool | None = None  # accepted; an over-long prompt is always a 400
    shift: Bool | None = None  # accepted; generation stops at the end of the context
    logprobs: Bool | None = None
    top_logprobs: Int | None = None
    debug_render_only: Bool | None = Field(None, alias="_debug_render_only")
    # Image generation: not supported (400 when set).
    width: Int | None = None
    height: Int | None = None
    steps: Int | None = None


class Message(_Request):
    role: Literal["system", "user", "assistant", "tool"]
    content: Str = ""
    thinking: Str | None = None  # passed to the chat template, which may ignore it
    images: list[Str] | None = None  # 400 unless empty
    tool_calls: list[dict[str, Any]] | None = None  # checked by tools.history_calls
    tool_name: Str | None = None
    tool_call_id: Str | None = None


class ChatRequest(_Request):
    """``POST /api/chat``."""

    model: Str = ""
    messages: list[Message] | None = None
    tools: list[dict[str, Any]] | None = None  # checked by tools.chat_tool_plan
    format: Format = None
    options: Options | None = None
    stream: Bool | None = None
    keep_alive: KeepAlive = None
    think: Think = None
    truncate: Bool | None = None
    shift: Bool | None = None
    logprobs: Bool | None = None
    top_logprobs: Int | None = None
    debug_render_only: Bool | None = Field(None, alias="_debug_render_only")


class EmbedRequest(_Request):
    """``POST /api/embed``."""

    model: Str = ""
    input: Str | list[Str] | None = None  # empty: loads the model, no embeddings
    truncate: Bool | None = None  # default true; false: an over-long input is a 400
    dimensions: Int | None = None  # 400 unless the model's own size
    keep_alive: KeepAlive = None
    options: Options | None = None  # num_ctx lowers the context; the rest is ignored


class EmbeddingsRequest(_Request):
    """``POST /api/embeddings`` (Ollama's older, single-prompt form)."""

    model: Str = ""
    prompt: Str | None = None
    keep_alive: KeepAlive = None
    options: Options | None = None


class ShowRequest(_Request):
    """``POST /api/show``. ``name`` is the older spelling of ``model``."""

    model: Str = ""
    name: Str = ""
    verbose: Bool | None = None
    system: Str | None = None


class PullRequest(_Request):
    """``POST /api/pull``. ``name`` is the older spelling of ``model``."""

    model: Str = ""
    name: Str = ""
    insecure: Bool | None = None
    stream: Bool | None = None


class CreateMessage(_Request):
    role: Literal["system", "user", "assistant"]
    content: Str


class CreateRequest(_Request):
    """``POST /api/create``: Ollama's JSON form of a parsed Modelfile; local files are
    uploaded first (``/api/blobs``) and named here by digest."""

    model_config = ConfigDict(extra="forbid", protected_namespaces=(), populate_by_name=True)

    model: Str = ""
    name: Str = ""
    from_: Str | None = Field(default=None, alias="from")
    files: dict[Str, Str] | None = None
    adapters: dict[Str, Str] | None = None
    template: Str | None = None
    system: Str | None = None
    license: Str | list[Str] | None = None
    parameters: dict[Str, Any] | None = None
    messages: list[CreateMessage] | None = None
    quantize: Str | None = None
    stream: Bool | None = None


class CopyRequest(_Request):
    """``POST /api/copy``."""

    source: Str
    destination: Str


class DeleteRequest(_Request):
    """``DELETE /api/delete``. ``name`` is the older spelling of ``model``."""

    model: Str = ""
    name: Str = ""


# --------------------------------------------------------------------------- responses
class _Response(BaseModel):
    model_config = ConfigDict(populate_by_name=True, protected_namespaces=())

    def dump(self) -> dict[str, Any]:
        return self.model_dump(exclude_none=True, by_alias=True)


class TopLogprob(_Response):
    token: str
    logprob: float
    bytes: list[int] | None = None


class Logprob(_Response):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] | None = None


class DebugInfo(_Response):
    rendered_template: str
    image_count: int = 0


class _GenerationChunk(_Response):
    model: str
    created_at: str  # RFC 3339 with nanoseconds, UTC
    done: bool
    done_reason: str | None = None  # "stop" | "length" | "load" | "unload"
    total_duration: int | None = None  # nanoseconds, like every duration here
    load_duration: int | None = None
    prompt_eval_count: int | None = None
    prompt_eval_duration: int | None = None
    eval_count: int | None = None
    eval_duration: int | None = None
    logprobs: list[Logprob] | None = None
    debug_info: DebugInfo | None = None

    def dump(self) -> dict[str, Any]:
        body = super().dump()
        # Ollama's order: model, created_at, the content, then done and the statistics.
        order: tuple[str, ...] = ("model", "created_at", "response", "message")
        head: dict[str, Any] = {k: body.pop(k) for k in order if k in body}
        return {**head, **body}


class GenerateResponse(_GenerationChunk):
    """One NDJSON line of ``/api/generate`` (or the whole reply with ``stream: false``)."""

    response: str = ""
    thinking: str | None = None  # the model's reasoning, apart from its answer
    context: list[int] | None = None  # prompt + output token ids on the final chunk


class ChatMessage(_Response):
    role: str = "assistant"
    content: str = ""
    thinking: str | None = None  # the model's reasoning, apart from its answer
    tool_calls: list[dict[str, Any]] | None = None  # {"function": {"name", "arguments"}}


class ChatResponse(_GenerationChunk):
    """One NDJSON line of ``/api/chat`` (or the whole reply with ``stream: false``)."""

    message: ChatMessage = Field(default_factory=ChatMessage)


class EmbedResponse(_Response):
    """``POST /api/embed``: one L2-normalised vector per input."""

    model: str
    embeddings: list[list[float]]
    total_duration: int | None = None  # nanoseconds
    load_duration: int | None = None
    prompt_eval_count: int | None = None


class EmbeddingsResponse(_Response):
    """``POST /api/embeddings``: the model's vector as it comes out."""

    embedding: list[float]


class ErrorResponse(_Response):
    error: str


class ModelDetails(_Response):
    parent_model: str = ""
    format: str
    family: str
    families: list[str]
    parameter_size: str
    quantization_level: str


class ListModel(_Response):
    name: str
    model: str
    modified_at: str
    size: int
    digest: str
    details: ModelDetails


class ListResponse(_Response):
    """``GET /api/tags``."""

    models: list[ListModel]


class ProcessModel(_Response):
    name: str
    model: str
    size: int
    digest: str
    details: ModelDetails
    expires_at: str
    size_vram: int
    context_length: int


class ProcessResponse(_Response):
    """``GET /api/ps``."""

    models: list[ProcessModel]


class ShowResponse(_Response):
    """``POST /api/show``."""

    modelfile: str
    parameters: str
    template: str
    system: str | None = None
    license: str | None = None
    details: ModelDetails
    model_info: dict[str, Any]
    capabilities: list[str]
    modified_at: str


class StatusResponse(_Response):
    """One NDJSON line of ``/api/pull`` and ``/api/create``."""

    status: str
    digest: str | None = None
    total: int | None = None
    completed: int | None = None


class VersionResponse(_Response):
    version: str
