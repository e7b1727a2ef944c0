"""The messages between a front end (the HTTP process, or ``LLMEngine`` in process) and the
engine core, as typed msgspec structs.

Across processes they travel msgpack-encoded over a local pipe (a socket pair between parent
and child, never a network socket); ``encode`` / ``decode_*`` are the only codecs. Every
struct is tagged, so one decoder per direction turns bytes back into the right type.

The core speaks in token ids only: what goes in is a prompt's ids and sampling parameters,
what comes out is, per step and per request, the *new* token ids (with their logprobs when
asked), a finish reason and counters. Text (detokenization, stop strings, logprob text) and
``n > 1`` fan-out live in the front end's ``OutputProcessor``.

Front end -> core: ``LoadModel`` (first, once), ``EngineCoreRequest``, ``EmbedRequest``,
``AbortRequests``, ``Shutdown``.
Core -> front end: ``Ready`` or ``Fatal`` (answering ``LoadModel``), ``EngineCoreOutputs``
(per step), ``Embeddings``, ``EngineStats``, ``Rejected``, ``Failed``.
"""

from __future__ import annotations

import time

import msgspec

from heron.config import EngineConfig
from heron.lora.request import LoRARequest
from heron.sampling_params import SamplingParams

# Bumped whenever a message changes shape; ``LoadModel`` carries it and the core refuses a
# front end that speaks another version.
PROTOCOL_VERSION = 4


# ----------------------------------------------------------------- front end -> core
class LoadModel(msgspec.Struct, tag=True, frozen=True):
    """Load a resolved checkpoint (a GGUF file or an HF directory path; never a store name)."""

    path: str
    config: EngineConfig
    # EOS ids beyond the model config's: the tokenizer's, which only the front end loads.
    eos_token_ids: list[int]
    # The tokenizer's HF ``tokenizers`` JSON: the grammar engine needs every token's bytes.
    tokenizer_json: str | None = None
    version: int = PROTOCOL_VERSION


class EngineCoreRequest(msgspec.Struct, tag=True, frozen=True):
    """One sequence to generate. ``n > 1`` arrives as n requests (the front end fans out);
    ``fork_of`` names a live sibling whose prompt KV this one shares once it is computed;
    ``lora`` the adapter it runs with (None: the base model)."""

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams  # n == 1 here
    arrival_time: float = msgspec.field(default_factory=time.monotonic)
    priority: int = 0
    cache_salt: str | None = None
    fork_of: str | None = None
    lora: LoRARequest | None = None


class EmbedRequest(msgspec.Struct, tag=True, frozen=True):
    request_id: str
    inputs: list[list[int]]  # token ids per input, already fitted to the context


class AbortRequests(msgspec.Struct, tag=True, frozen=True):
    request_ids: list[str]


class Shutdown(msgspec.Struct, tag=True, frozen=True):
    pass


# ----------------------------------------------------------------- core -> front end
class TokenLogprobs(msgspec.Struct, array_like=True, frozen=True):
    """The raw logprobs of one sampled token: its own, its rank (1 = most likely), and the
    top alternatives (ids and logprobs, most likely first). No text: the front end spells."""

    logprob: float
    rank: int
    top_ids: list[int]
    top_logprobs: list[float]


class PromptLogprobs(msgspec.Struct, array_like=True, frozen=True):
    """The raw logprobs of prompt tokens 1 .. P-1 (token 0 has nothing before it), columnar:
    entry i is prompt token i + 1, its logprob, its rank, and the top alternatives at its
    position (``SamplingParams.prompt_logprobs`` of them, most likely first)."""

    logprobs: list[float]
    ranks: list[int]
    top_ids: list[list[int]]
    top_logprobs: list[list[float]]


class EngineCoreOutput(msgspec.Struct, array_like=True, omit_defaults=True):
    """What one request produced in one step: only what is new since the last output.
    ``prompt_logprobs`` comes once, with a request's first output, when it asked."""

    request_id: str
    new_token_ids: list[int]
    new_logprobs: list[TokenLogprobs] | None = None  # one per new token, when asked for
    finish_reason: str | None = None  # "stop", "length", "abort"; None while running
    stop_reason: int | None = None  # the stop token id that ended it
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache
    prompt_logprobs: PromptLogprobs | None = None


class EngineStats(msgspec.Struct, tag=True):
    """A snapshot of the core, sent with every step, for /metrics and /ready."""

    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    num_preemptions: int = 0
    num_free_blocks: int = 0
    num_blocks: int = 0
    # speculative decoding, cumulative (zero without it): verified steps with drafts,
    # drafts verified, drafts accepted, and accepted drafts by position in their run
    spec_num_drafts: int = 0
    spec_num_draft_tokens: int = 0
    spec_num_accepted_tokens: int = 0
    spec_accepted_per_pos: list[int] = msgspec.field(default_factory=list)


class EngineCoreOutputs(msgspec.Struct, tag=True):
    """One step's outputs, for the requests that advanced or finished."""

    outputs: list[EngineCoreOutput]
    stats: EngineStats | None = None


class Ready(msgspec.Struct, tag=True, frozen=True):
    max_model_len: int
    embedding_dim: int | None = None  # set for embedding models
    version: int = PROTOCOL_VERSION


class Fatal(msgspec.Struct, tag=True, frozen=True):
    message: str


class Embeddings(msgspec.Struct, tag=True, frozen=True):
    request_id: str
    vectors: list[list[float]]


class Rejected(msgspec.Struct, tag=True, frozen=True):
    """A request refused before it ran (bad input); the core stays up."""

    request_id: str
    message: str


class Failed(msgspec.Struct, tag=True, frozen=True):
    """Requests that were running when a step failed; the core stays up."""

    request_ids: list[str]
    message: str


ToCore = LoadModel | EngineCoreRequest | EmbedRequest | AbortRequests | Shutdown
FromCore = Ready | Fatal | EngineCoreOutputs | Embeddings | EngineStats | Rejected | Failed

_encoder = msgspec.msgpack.Encoder()
_to_core = msgspec.msgpack.Decoder(ToCore)
_from_core = msgspec.msgpack.Decoder(FromCore)


def encode(msg: ToCore | FromCore) -> bytes:
    return _encoder.encode(msg)


def decode_to_core(data: bytes) -> ToCore:
    """Raises msgspec.ValidationError / DecodeError for a malformed message."""
    return _to_core.decode(data)


def decode_from_core(data: bytes) -> FromCore:
    return _from_core.decode(data)


# ------------------------------------------------------------------------ errors
class EngineDeadError(RuntimeError):
    """The engine-core process has exited."""


class EngineRequestError(RuntimeError):
    """The engine failed while running this request; the server stays up."""


class QueueFullError(RuntimeError):
    """Too many requests are waiting; the caller should retry later (503 + Retry-After)."""


class EngineLoadingError(QueueFullError):
    """The model is still loading; like a full queue, the caller should retry shortly."""
