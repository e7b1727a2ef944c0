"""One generation request's run through the engine, shared by every API family.

A ``GenerationRun`` owns what is the same for the OpenAI, Anthropic and Ollama APIs:
submitting to the model's engine client (one stream per prompt, merged into one stream of
deltas whose ``index`` is the choice across prompts: prompt i, choice j -> i * n + j),
waiting for the first output so that a rejection is still an HTTP error, cancelling on
client disconnect (which aborts the engine request and frees its KV blocks within a step),
what each choice has produced, timings (TTFT, inter-token gaps), usage and the request's
metrics (recorded once, by ``close``), and how engine failures become HTTP errors.

The families only translate: their request into prompts and ``SamplingParams``, and the
run's deltas and choices into their own chunk and response shapes.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterable
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, NoReturn

from fastapi import Request
from fastapi.responses import Response, StreamingResponse
from starlette.types import Receive, Scope, Send

from heron.engine.protocol import EngineDeadError, EngineRequestError, QueueFullError
from heron.outputs import GenerationDelta, Logprob, PromptLogprobs
from heron.sampling_params import SamplingParams
from heron.server.common import APIError, until_disconnected
from heron.server.model_spec import LoadedModel
from heron.server.parsing import Event, OutputParser, ParsedOutput, ParserFactory, ToolCall
from heron.server.state import ServerState

# Raised from a stream after its first chunk: the families turn these into an error event.
STREAM_ERRORS = (EngineRequestError, EngineDeadError, ValueError)


class ClientGone(Exception):
    """The client disconnected before the reply started; the engine request is aborted."""


@dataclass(slots=True)
class Choice:
    """What one choice has produced so far."""

    text: list[str] = field(default_factory=list)
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[dict[int, Logprob]] = field(default_factory=list)
    num_output_tokens: int = 0
    finish_reason: str | None = None  # "stop", "length", "abort", "tool_calls"
    stop_reason: int | str | None = None  # the stop string or token id that ended it
    parser: OutputParser | None = None  # None: the text is all content
    parsed: ParsedOutput = field(default_factory=ParsedOutput)
    pending: list[Event] = field(default_factory=list)  # parsed, not yet taken

    @property
    def output(self) -> str:
        return "".join(self.text)

    @property
    def content(self) -> str:
        return self.output if self.parser is None else "".join(self.parsed.content)

    @property
    def reasoning(self) -> str:
        return "".join(self.parsed.reasoning)

    @property
    def tool_calls(self) -> list[ToolCall]:
        return self.parsed.tool_calls

    def parse(self, delta: GenerationDelta) -> None:
        """Run ``delta``'s text through the parser (the end flushes it): the events go to
        ``parsed`` and ``pending``; an output that held tool calls and stopped finishes
        with "tool_calls" (mutates ``delta.finish_reason``)."""
        if self.parser is None:
            return
        events = self.parser.feed(delta.text) if delta.text else []
        if delta.finish_reason is not None:
            events.extend(self.parser.finish())
        self.parsed.add(events)
        self.pending.extend(events)
        if delta.finish_reason == "stop" and self.parsed.tool_calls:
            delta.finish_reason = "tool_calls"

    @property
    def stop_string(self) -> str | None:
        return self.stop_reason if isinstance(self.stop_reason, str) else None


class GenerationRun:
    """One request's engine streams and their bookkeeping.

    ``param`` names the request field a 400 from the engine points at. Each stream is
    pumped by its own task; ``close`` cancels them, which aborts whatever still runs.
    Times are ``time.perf_counter_ns`` values; ``started_ns`` is when the handler began.
    """

    def __init__(
        self,
        state: ServerState,
        model: LoadedModel,
        prompts: list[list[int]],
        params: SamplingParams,
        request_id: str,
        started_ns: int,
        param: str | None = None,
        parser: ParserFactory | None = None,
    ) -> None:
        self.state = state
        self.model = model
        self.n = params.n
        self.param = param
        self.prompt_lens = [len(p) for p in prompts]
        self.num_prompt_tokens = sum(self.prompt_lens)
        self.num_cached = [0] * len(prompts)
        # per prompt, when the params ask for prompt_logprobs (they come with choice 0)
        self.prompt_logprobs: list[PromptLogprobs | None] = [None] * len(prompts)
        self.choices = [
            Choice(parser=None if parser is None else parser())
            for _ in range(len(prompts) * params.n)
        ]
        self.started_ns = started_ns
        self.submitted_ns = time.perf_counter_ns()
        self.first_token_ns: int | None = None
        self.last_token_ns = 0
        self.itl: list[float] = []  # seconds between the first choice's outputs
        self._queue: asyncio.Queue[tuple[int, Any]] = asyncio.Queue()
        self._waiting = len(prompts)  # streams that have not ended
        self._closed = False
        engine = model.engine
        self._tasks = [
            asyncio.ensure_future(
                self._pump(
                    i,
                    engine.generate(
                        p,
                        params,
                        request_id if len(prompts) == 1 else f"{request_id}-{i}",
                        lora_request=model.spec.lora,
                    ),
                )
            )
            for i, p in enumerate(prompts)
        ]

    # ------------------------------------------------------------------ counts
    @property
    def num_cached_tokens(self) -> int:
        return sum(self.num_cached)

    @property
    def num_output_tokens(self) -> int:
        return sum(c.num_output_tokens for c in self.choices)

    @property
    def finish_reason(self) -> str | None:
        return self.choices[0].finish_reason

    def take_events(self, index: int) -> list[Event]:
        """The parsed events of choice ``index`` not taken yet (empties its ``pending``);
        a family with a parser emits these in place of ``delta.text``."""
        choice = self.choices[index]
        events, choice.pending = choice.pending, []
        return events

    # --------------------------------------------------------------- streaming
    async def _pump(self, i: int, stream: AsyncIterator[GenerationDelta]) -> None:
        try:
            async with aclosing(stream):  # type: ignore[type-var]
                async for delta in stream:
                    self._queue.put_nowait((i, delta))
        except Exception as exc:
            self._queue.put_nowait((i, exc))
        else:
            self._queue.put_nowait((i, None))

    async def _first(self) -> list[GenerationDelta]:
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
        """The deltas after those ``start`` returned, until every stream has ended. Raises
        one of ``STREAM_ERRORS`` if the engine fails."""
        while self._waiting:
            _, delta = await self._next()
            if delta is not None:
                yield delta

    async def stream(self, first: Iterable[GenerationDelta]) -> AsyncIterator[GenerationDelta]:
        """``first`` (from ``start``), then ``rest``."""
        for delta in first:
            yield delta
        async for delta in self.rest():
            yield delta

    async def _all(self) -> None:
        await self._first()
        async for _ in self.rest():
            pass

    async def start(self, request: Request) -> list[GenerationDelta]:
        """Submit, and wait until every prompt has output (or has ended), so that the
        engine's refusals are raised before any response. Returns the deltas so far.
        Raises APIError (400 bad input, 500 engine failure), QueueFullError and
        EngineDeadError (the app answers 503), or ClientGone."""
        first: list[GenerationDelta] = await self._guard(request, self._first())
        return first

    async def collect(self, request: Request) -> None:
        """Run to the end (a non-streamed reply); ``choices`` then hold everything. Raises
        like ``start``, and records the metrics."""
        await self._guard(request, self._all())
        self.close()

    async def _guard(self, request: Request, work: Any) -> Any:
        try:
            return await until_disconnected(request, work)
        except asyncio.CancelledError:
            self.close("abort")
            current = asyncio.current_task()
            if current is not None and current.cancelling():
                raise  # the handler itself is being cancelled, not just the work
            raise ClientGone() from None
        except BaseException as exc:
            self.fail(exc)

    def _record(self, prompt_index: int, delta: GenerationDelta) -> bool:
        """Account for ``delta``; False if it is to be dropped (a repeat after the end)."""
        delta.index += prompt_index * self.n
        self.num_cached[prompt_index] = delta.num_cached_tokens
        if delta.prompt_logprobs is not None:
            self.prompt_logprobs[prompt_index] = delta.prompt_logprobs
        choice = self.choices[delta.index]
        if choice.finish_reason is not None:
            return False
        choice.text.append(delta.text)
        choice.token_ids.extend(delta.token_ids)
        if delta.logprobs:
            choice.logprobs.extend(delta.logprobs)
        choice.num_output_tokens = delta.num_output_tokens
        choice.parse(delta)
        if delta.finish_reason is not None:
            choice.finish_reason = delta.finish_reason
            choice.stop_reason = delta.stop_reason
        if delta.token_ids or delta.text:
            now = time.perf_counter_ns()
            if self.first_token_ns is None:
                self.first_token_ns = now
            if delta.index == 0:  # inter-token gaps of the first choice: one per step
                if self.last_token_ns:
                    self.itl.append((now - self.last_token_ns) / 1e9)
                self.last_token_ns = now
        return True

    # --------------------------------------------------------------- endings
    def close(self, finish_reason: str | None = None, observe: bool = True) -> None:
        """Abort what still runs and record the request's metrics (once)."""
        for task in self._tasks:
            task.cancel()
        if self._closed:
            return
        self._closed = True
        if not observe:
            return
        reason = finish_reason or self.choices[0].finish_reason or "abort"
        now = time.perf_counter_ns()
        ttft = None if self.first_token_ns is None else (self.first_token_ns - self.started_ns)
        # Labelled by the model whose engine ran it; an adapter's requests are also counted
        # by adapter.
        spec = self.model.spec
        if spec.lora is not None:
            self.state.metrics.observe_lora(spec.base or spec.name, spec.lora.name)
        self.state.metrics.observe_request(
            spec.base or spec.name,
            self.num_prompt_tokens,
            self.num_output_tokens,
            None if ttft is None else ttft / 1e9,
            self.itl,
            (now - self.started_ns) / 1e9,
            reason,
        )

    def fail(self, exc: BaseException) -> NoReturn:
        """Close the run and raise what the client gets: bad input is a 400, a failed
        request a 500; a full queue and a dead engine go on to the app's handlers (503).
        A request the engine refused before running it is not counted in the metrics."""
        rejected = isinstance(exc, ValueError | QueueFullError)
        self.close("error", observe=not rejected)
        if isinstance(exc, ValueError):
            raise APIError(400, str(exc), "invalid_request", self.param) from exc
        if isinstance(exc, EngineRequestError):
            raise APIError(500, str(exc), "server_error") from exc
        raise exc

    def respond(self, events: AsyncIterator[bytes], media_type: str) -> Response:
        """A streamed reply of ``events`` that closes this run however it ends."""
        return RunStream(events, self, media_type)


class RunStream(StreamingResponse):
    """A streamed reply that closes its run however the response ends, even if the client
    left before the first chunk (then the chunk generator never starts, so its own cleanup
    never runs)."""

    def __init__(self, events: AsyncIterator[bytes], run: GenerationRun, media_type: str) -> None:
        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        if media_type != "text/event-stream":
            headers = {}
        super().__init__(events, media_type=media_type, headers=headers)
        self.run = run

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            self.run.close()


def stream_error(exc: Exception) -> APIError:
    """The error a family sends inside a stream that already started."""
    return APIError(500, str(exc) or type(exc).__name__, "server_error")
