"""What crosses between the engine-core process and the HTTP server process.

Messages are plain tuples of built-in types over a local ``multiprocessing`` pipe (a socket
pair between parent and child, never a network socket).
"""

from __future__ import annotations

from dataclasses import dataclass

from heron.request import Logprob


@dataclass(slots=True)
class GenerationDelta:
    """New output of one choice since the previous delta of the same request."""

    request_id: str
    index: int  # choice index, 0..n-1
    text: str  # new text (never splits a UTF-8 character)
    token_ids: list[int]  # new token ids
    logprobs: list[dict[int, Logprob]] | None  # one entry per new token when asked for
    finish_reason: str | None  # "stop", "length", "abort", or None while running
    stop_reason: int | str | None
    num_prompt_tokens: int
    num_cached_tokens: int
    num_output_tokens: int  # cumulative for this choice


@dataclass(slots=True)
class EngineStats:
    """A snapshot the engine core sends with every step, for /metrics and /ready."""

    num_running: int = 0
    num_waiting: int = 0
    kv_cache_usage: float = 0.0
    prefix_cache_queries: int = 0
    prefix_cache_hits: int = 0
    num_preemptions: int = 0
    num_free_blocks: int = 0
    num_blocks: int = 0


class EngineDeadError(RuntimeError):
    """The engine-core process has exited."""


class EngineRequestError(RuntimeError):
    """The engine failed while running this request; the server stays up."""


class QueueFullError(RuntimeError):
    """Too many requests are waiting; the caller should retry later (503 + Retry-After)."""


class EngineLoadingError(QueueFullError):
    """The model is still loading; like a full queue, the caller should retry shortly."""
