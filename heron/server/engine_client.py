"""The server side of the engine: starts the engine-core process and streams its outputs.

A reader thread receives the core's messages and hands each delta to the asyncio queue of
its request, so the event loop never blocks on the pipe.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import itertools
import multiprocessing as mp
import threading
from collections.abc import AsyncIterator, Callable
from queue import SimpleQueue
from typing import Any

from heron.config import EngineConfig, ModelConfig
from heron.engine.embedder import embedding_max_len
from heron.engine.llm_engine import load_tokenizer, resolve_model
from heron.loader import load_checkpoint
from heron.loader.pooling import load_pooling_config
from heron.models.registry import is_embedding_architecture
from heron.request import Logprob
from heron.runner.model_runner import plan_max_model_len
from heron.sampling_params import SamplingParams
from heron.server.engine_core import run_engine_core
from heron.server.protocol import (
    EngineDeadError,
    EngineLoadingError,
    EngineRequestError,
    EngineStats,
    GenerationDelta,
    QueueFullError,
)
from heron.tokenizer import Tokenizer

_DONE = object()


class AsyncEngineClient:
    """Submit requests to the engine core and iterate their outputs.

    An embedding model (``is_embedding``) takes ``embed`` and no ``generate``; every other
    model the reverse. ``generate`` raises ValueError for input the engine rejects (before
    the first delta), QueueFullError when too many requests wait, EngineRequestError if the
    engine fails mid-request, EngineDeadError if the core process is gone. Closing the
    iterator early (client disconnect, cancellation) aborts the request, which frees its KV
    blocks.
    """

    def __init__(
        self,
        model: str,
        config: EngineConfig,
        max_waiting: int = 256,
        on_fatal: Callable[[str], None] | None = None,
        chat_template: str | None = None,
    ) -> None:
        self.model_path = resolve_model(model)
        checkpoint = load_checkpoint(self.model_path)  # header only: config + tokenizer
        self.model_config: ModelConfig = checkpoint.config
        self.metadata: dict[str, Any] = checkpoint.gguf.metadata if checkpoint.gguf else {}
        self.tokenizer: Tokenizer = load_tokenizer(checkpoint)
        if chat_template:  # a Modelfile TEMPLATE replaces the checkpoint's own
            self.tokenizer.override_chat_template(chat_template)
        self.config = config
        self.max_waiting = max_waiting
        self.is_embedding = is_embedding_architecture(self.model_config.architecture)
        self.embedding_dim: int | None = None  # length of each vector, for embedding models
        if self.is_embedding:
            self.max_model_len = embedding_max_len(self.model_config, config)
            pooling = load_pooling_config(self.model_path)
            self.embedding_dim = pooling.output_dim(self.model_config.hidden_size)
        else:
            self.max_model_len, _ = plan_max_model_len(self.model_config, config)
        self.ready = False  # set once the engine process has loaded the weights
        self.on_fatal = on_fatal
        self.stats = EngineStats()
        self._ids = itertools.count()
        self._queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue[Any]]] = {}
        self._lock = threading.Lock()
        self._outbox: SimpleQueue[tuple[Any, ...]] = SimpleQueue()
        self._dead: str | None = None
        self._closing = False
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self._proc = ctx.Process(
            target=run_engine_core, args=(self.model_path, config, child), daemon=True
        )
        self._proc.start()
        child.close()
        # The weights load in the engine process while the server already answers /health;
        # /ready and generation answer 503 until the reader sees "ready".
        self._writer = threading.Thread(target=self._write_loop, name="heron-engine-writer")
        self._writer.daemon = True
        self._writer.start()
        self._reader = threading.Thread(target=self._read_loop, name="heron-engine-reader")
        self._reader.daemon = True
        self._reader.start()

    # ------------------------------------------------------------------ requests
    @property
    def num_in_flight(self) -> int:
        return len(self._queues)

    @property
    def alive(self) -> bool:
        return self._dead is None and self._proc.is_alive()

    async def generate(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        request_id: str | None = None,
        priority: int = 0,
    ) -> AsyncIterator[GenerationDelta]:
        if not self.alive:
            raise EngineDeadError(self._dead or "the engine process has exited")
        if not self.ready:
            raise EngineLoadingError("the model is still loading")
        if self.stats.num_waiting + self._pending() >= self.max_waiting:
            raise QueueFullError("server busy: too many requests are waiting")
        rid = request_id or f"req-{next(self._ids)}"
        queue: asyncio.Queue[Any] = asyncio.Queue()
        with self._lock:
            if rid in self._queues:
                raise ValueError(f"request id {rid!r} is already in use")
            self._queues[rid] = (asyncio.get_running_loop(), queue)
        finished = False
        try:
            self._send(("add", rid, list(prompt_token_ids), _params_dict(params), priority))
            remaining = params.n
            while remaining:
                item = await queue.get()
                if isinstance(item, BaseException):
                    finished = True
                    raise item
                if item.finish_reason is not None:
                    remaining -= 1
                yield item
            finished = True
        finally:
            with self._lock:
                self._queues.pop(rid, None)
            if not finished and self.alive:
                self._send(("abort", rid))

    async def embed(
        self, inputs: list[list[int]], request_id: str | None = None
    ) -> list[list[float]]:
        """One vector per input (token ids fitted to ``max_model_len``), batched in the core
        with every other embed request queued at the same time. Raises like ``generate``;
        cancelling the call withdraws the request if it has not run yet."""
        if not self.alive:
            raise EngineDeadError(self._dead or "the engine process has exited")
        if not self.ready:
            raise EngineLoadingError("the model is still loading")
        if self.stats.num_waiting + self._pending() >= self.max_waiting:
            raise QueueFullError("server busy: too many requests are waiting")
        rid = request_id or f"emb-{next(self._ids)}"
        queue: asyncio.Queue[Any] = asyncio.Queue()
        with self._lock:
            if rid in self._queues:
                raise ValueError(f"request id {rid!r} is already in use")
            self._queues[rid] = (asyncio.get_running_loop(), queue)
        finished = False
        try:
            self._send(("embed", rid, [list(ids) for ids in inputs]))
            item = await queue.get()
            finished = True
            if isinstance(item, BaseException):
                raise item
            vectors: list[list[float]] = item
            return vectors
        finally:
            with self._lock:
                self._queues.pop(rid, None)
            if not finished and self.alive:
                self._send(("abort", rid))

    def _pending(self) -> int:
        # requests submitted but not yet counted by the engine's last stats snapshot
        return max(0, len(self._queues) - self.stats.num_running - self.stats.num_waiting)

    def _send(self, msg: tuple[Any, ...]) -> None:
        """Queue a command for the writer thread: a full pipe (the engine is mid-step) must
        never block the event loop."""
        if self._dead is not None:
            raise EngineDeadError(self._dead)
        self._outbox.put(msg)

    def _write_loop(self) -> None:
        while True:
            msg = self._outbox.get()
            try:
                self._conn.send(msg)
            except (OSError, EOFError):
                return  # the reader sees the closed pipe and fails every request
            if msg[0] == "shutdown":
                return

    # -------------------------------------------------------------------- reader
    def _read_loop(self) -> None:
        while True:
            try:
                msg = self._conn.recv()
                self._dispatch(msg)
            except Exception as exc:  # EOF, or anything unexpected: the engine is gone
                self._dead = self._dead or f"the engine process has exited ({exc!r})"
                self._fail_all(EngineDeadError(self._dead))
                if not self._closing and self.on_fatal is not None:
                    self.on_fatal(self._dead)
                return

    def _dispatch(self, msg: tuple[Any, ...]) -> None:
        kind = msg[0]
        if kind == "ready":
            if msg[1]["max_model_len"] != self.max_model_len:  # both sides plan alike
                self.max_model_len = min(self.max_model_len, msg[1]["max_model_len"])
            if "embedding_dim" in msg[1]:
                self.embedding_dim = msg[1]["embedding_dim"]
            self.ready = True
        elif kind == "fatal":
            self._dead = msg[1]
        elif kind == "outputs":
            self.stats = EngineStats(**msg[2])
            for d in msg[1]:
                self._deliver(d[0], _delta(d))
        elif kind == "embeddings":
            self._deliver(msg[1], msg[2])
        elif kind == "stats":
            self.stats = EngineStats(**msg[1])
        elif kind == "rejected":
            self._deliver(msg[1], ValueError(msg[2]))
        elif kind == "failed":
            for rid in msg[1]:
                self._deliver(rid, EngineRequestError(msg[2]))

    def _deliver(self, rid: str, item: Any) -> None:
        with self._lock:
            entry = self._queues.get(rid)
        if entry is not None:
            loop, queue = entry
            with contextlib.suppress(RuntimeError):  # that request's event loop has closed
                loop.call_soon_threadsafe(queue.put_nowait, item)

    def _fail_all(self, exc: BaseException) -> None:
        with self._lock:
            entries = list(self._queues.items())
        for _, (loop, queue) in entries:
            loop.call_soon_threadsafe(queue.put_nowait, exc)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the weights are loaded (True), the engine died, or the timeout."""
        import time

        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.ready and self.alive:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return self.ready

    def shutdown(self, timeout: float = 10.0) -> None:
        self._closing = True
        try:
            self._send(("shutdown",))
        except EngineDeadError:
            pass
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.kill()
            self._proc.join()


def _params_dict(params: SamplingParams) -> dict[str, Any]:
    return {f.name: getattr(params, f.name) for f in dataclasses.fields(params)}


def _delta(d: tuple[Any, ...]) -> GenerationDelta:
    rid, index, text, ids, lps, finish, stop_reason, n_prompt, n_cached, n_out = d
    logprobs = None
    if lps is not None:
        logprobs = [{t: Logprob(*v) for t, v in entry.items()} for entry in lps]
    return GenerationDelta(
        rid, index, text, ids, logprobs, finish, stop_reason, n_prompt, n_cached, n_out
    )
