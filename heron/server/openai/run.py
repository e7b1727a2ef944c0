"""One request's engine streams merged into one, the event stream that closes them, and
how engine failures become HTTP errors."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, NoReturn

from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from heron import __version__
from heron.request import Logprob
from heron.sampling_params import SamplingParams
from heron.server.common import APIError, error_body, sse
from heron.server.model_manager import LoadedModel
from heron.server.openai.protocol import (
    PromptTokensDetails,
    Usage,
)
from heron.server.openai.validation import bad_request
from heron.server.protocol import (
    EngineRequestError,
    GenerationDelta,
    QueueFullError,
)
from heron.server.state import ServerState

SYSTEM_FINGERPRINT = f"heron-{__version__}"
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_DONE = "[DONE]"


# ---------------------------------------------------------------------------- runs
@dataclass(slots=True)
class _Choice:
    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, Logprob]] = field(default_factory=list)
    num_output_tokens: int = 0
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class EngineRun:
    """One request's engine streams (one per prompt), merged into one stream of deltas
    whose ``index`` is the choice index across prompts (prompt i, choice j -> i * n + j).

    Each stream is pumped by its own task; ``close`` cancels them, which aborts whatever is
    still running in the engine. Also keeps the request's timings and usage for metrics.
    """

    def __init__(
        self,
        state: ServerState,
        model: LoadedModel,
        prompts: list[list[int]],
        params: SamplingParams,
        request_id: str,
        started: float,
    ) -> None:
        self.state = state
        self.model = model
        self.n = params.n
        self.num_prompt_tokens = sum(len(p) for p in prompts)
        self.num_cached_tokens = [0] * len(prompts)
        self.choices = [_Choice() for _ in range(len(prompts) * params.n)]
        self.started = started
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.itl: list[float] = []
        self._queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self._waiting = len(prompts)  # streams that have not ended
        self._observed = False
        engine = model.engine
        self._tasks = [
            asyncio.ensure_future(
                self._pump(
                    i,
                    engine.generate(
                        p, params, request_id if len(prompts) == 1 else f"{request_id}-{i}"
                    ),
                )
            )
            for i, p in enumerate(prompts)
        ]

    async def _pump(self, i: int, stream: AsyncIterator[GenerationDelta]) -> None:
        try:
            async with aclosing(stream):  # type: ignore[type-var]
                async for delta in stream:
                    self._queue.put_nowait((i, delta))
        except Exception as exc:
            self._queue.put_nowait((i, exc))
        else:
            self._queue.put_nowait((i, None))

    async def start(self) -> list[GenerationDelta]:
        """Wait until every prompt has output (or has ended), so that the engine's
        rejections (ValueError, QueueFullError, ...) are raised before any response."""
        pending = set(range(len(self._tasks)))
        buffered: list[GenerationDelta] = []
        while pending:
            i, delta = await self._next()
            pending.discard(i)
            if delta is not None:
                buffered.append(delta)
        return buffered

    async def _next(self) -> tuple[int, GenerationDelta | None]:
        i, item = await self._queue.get()
        if isinstance(item, BaseException):
            raise item
        if item is None:
            self._waiting -= 1
            return i, None
        return i, item if self._record(i, item) else None

    async def rest(self) -> AsyncIterator[GenerationDelta]:
        while self._waiting:
            _, delta = await self._next()
            if delta is not None:
                yield delta

    async def collect(self) -> None:
        await self.start()
        async for _ in self.rest():
            pass

    def _record(self, prompt_index: int, delta: GenerationDelta) -> bool:
        """Account for ``delta``; False if it is to be dropped (a repeat after the end)."""
        delta.index += prompt_index * self.n
        self.num_cached_tokens[prompt_index] = delta.num_cached_tokens
        choice = self.choices[delta.index]
        if choice.finish_reason is not None:
            return False
        choice.text.append(delta.text)
        choice.token_ids.extend(delta.token_ids)
        if delta.logprobs:
            choice.logprobs.extend(delta.logprobs)
        choice.num_output_tokens = delta.num_output_tokens
        if delta.finish_reason is not None:
            choice.finish_reason = delta.finish_reason
            choice.stop_reason = delta.stop_reason
        if delta.token_ids or delta.text:
            now = time.monotonic()
            if self.first_token_at is None:
                self.first_token_at = now
            if delta.index == 0:  # inter-token gaps of the first choice: one per step
                if self.last_token_at is not None:
                    self.itl.append(now - self.last_token_at)
                self.last_token_at = now
        return True

    def usage(self) -> Usage:
        completion = sum(c.num_output_tokens for c in self.choices)
        return Usage(
            prompt_tokens=self.num_prompt_tokens,
            completion_tokens=completion,
            total_tokens=self.num_prompt_tokens + completion,
            prompt_tokens_details=PromptTokensDetails(cached_tokens=sum(self.num_cached_tokens)),
        )

    def close(self, finish_reason: str | None = None, observe: bool = True) -> None:
        """Abort what still runs and record the request's metrics (once)."""
        for task in self._tasks:
            task.cancel()
        if self._observed or not observe:
            self._observed = True
            return
        self._observed = True
        reason = finish_reason or self.choices[0].finish_reason or "abort"
        ttft = None if self.first_token_at is None else self.first_token_at - self.started
        self.state.metrics.observe_request(
            self.model.name,
            self.num_prompt_tokens,
            sum(c.num_output_tokens for c in self.choices),
            ttft,
            self.itl,
            time.monotonic() - self.started,
            reason,
        )


# ------------------------------------------------------------------------- serving
class EventStream(StreamingResponse):
    """Server-sent events that close their engine run however the response ends, even if
    the client left before the first event (when the event generator never starts, its own
    cleanup never runs)."""

    def __init__(self, events: AsyncIterator[bytes], run: EngineRun) -> None:
        super().__init__(events, media_type="text/event-stream", headers=SSE_HEADERS)
        self.run = run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.run.close()


def nothing_to_send(delta: GenerationDelta, top: int | None) -> bool:
    """A delta whose tokens have no text yet (a held partial character or stop string)
    makes a chunk only if it carries logprobs."""
    if delta.text or delta.finish_reason is not None:
        return False
    return top is None or not delta.token_ids


def mid_stream_error(exc: Exception) -> bytes:
    err = APIError(500, str(exc) or type(exc).__name__, "server_error")
    return sse(error_body("openai", err))


def dump_chunk(model: Any) -> dict[str, Any]:
    """A chunk without the optional fields left unset (keeps explicit nulls)."""
    data: dict[str, Any] = model.model_dump(exclude_unset=True)
    return data


def disconnected(run: EngineRun) -> Response:
    """The client went away: abort the engine request. Nobody reads this reply."""
    run.close("abort")
    current = asyncio.current_task()
    if current is not None and current.cancelling():
        raise asyncio.CancelledError  # the handler itself is being cancelled, not just the work
    return Response(status_code=499)


def fail(run: EngineRun, exc: BaseException) -> NoReturn:
    """Close ``run`` and answer an engine failure: bad input is a 400, a failed request a
    500; a full queue and a dead engine go to the app's handlers (503). A request the
    engine rejected before running it is not counted in the metrics."""
    rejected = isinstance(exc, ValueError | QueueFullError)
    run.close("error", observe=not rejected)
    if isinstance(exc, ValueError):
        raise bad_request(str(exc)) from exc
    if isinstance(exc, EngineRequestError):
        raise APIError(500, str(exc), "server_error") from exc
    raise exc


async def chain(
    first: Iterable[GenerationDelta], rest: AsyncIterator[GenerationDelta]
) -> AsyncIterator[GenerationDelta]:
    for delta in first:
        yield delta
    async for delta in rest:
        yield delta
