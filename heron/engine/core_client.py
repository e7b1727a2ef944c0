"""The HTTP process's side of the engine: starts the engine-core process, submits requests
and streams their outputs.

A writer thread sends encoded messages (a full pipe never blocks the event loop); a reader
thread decodes each step's ``EngineCoreOutputs``, runs the ``OutputProcessor`` on them
(detokenization, stop strings, fan-in of n > 1) and hands each request's deltas to its
asyncio queue. Requests that hit a stop string are aborted in the core from there.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
import time
from collections.abc import AsyncIterator, Callable
from queue import SimpleQueue
from typing import Any

from heron.config import EngineConfig, ModelConfig
from heron.engine.output_processor import OutputProcessor
from heron.engine.process import start_core_process
from heron.engine.protocol import (
    AbortRequests,
    Embeddings,
    EmbedRequest,
    EngineCoreOutputs,
    EngineDeadError,
    EngineLoadingError,
    EngineRequestError,
    EngineStats,
    Failed,
    Fatal,
    LoadModel,
    QueueFullError,
    Ready,
    Rejected,
    Shutdown,
    ToCore,
    decode_from_core,
    encode,
)
from heron.engine.replica import EngineReplica
from heron.kvcache.plan import embedding_max_len, plan_max_model_len
from heron.loader import load_checkpoint
from heron.lora.request import LoRARequest
from heron.models.registry import is_embedding_architecture
from heron.outputs import GenerationDelta
from heron.prompt import ChatRenderer
from heron.sampling_params import SamplingParams
from heron.tokenizer import Tokenizer


class AsyncEngineClient:
    """Submit requests to the engine core and iterate their outputs.

    ``model_path`` is a resolved checkpoint (the model manager resolves names). An embedding
    model (``is_embedding``) takes ``embed`` and no ``generate``; every other model the
    reverse. ``generate`` raises ValueError for input the engine rejects (before the first
    delta), QueueFullError when too many requests wait, EngineRequestError if the engine
    fails mid-request, EngineDeadError if the core process is gone. Closing the iterator
    early (client disconnect, cancellation) aborts the request, which frees its KV blocks.
    """

    def __init__(
        self,
        model_path: str,
        config: EngineConfig,
        max_waiting: int = 256,
        on_fatal: Callable[[str], None] | None = None,
        chat_template: str | None = None,
        process: EngineReplica | None = None,
    ) -> None:
        """``process``: an engine core started earlier (``start_core_process``, or a
        data-parallel replica), else one is started here, first, so that it imports while
        this reads the header."""
        core: EngineReplica = process or start_core_process()
        try:
            self._setup(model_path, config, max_waiting, on_fatal, chat_template, core)
        except BaseException:
            core.kill()
            core.conn.close()
            raise

    def _setup(
        self,
        model_path: str,
        config: EngineConfig,
        max_waiting: int,
        on_fatal: Callable[[str], None] | None,
        chat_template: str | None,
        core: EngineReplica,
    ) -> None:
        self.model_path = model_path
        checkpoint = load_checkpoint(model_path)  # header only: config + tokenizer
        self.model_config: ModelConfig = checkpoint.config
        self.metadata: dict[str, Any] = checkpoint.gguf.metadata if checkpoint.gguf else {}
        self.tokenizer: Tokenizer = Tokenizer.from_checkpoint(checkpoint)
        # A Modelfile TEMPLATE replaces the checkpoint's own.
        self.renderer = ChatRenderer(self.tokenizer, chat_template)
        self.config = config
        self.max_waiting = max_waiting
        self.is_embedding = is_embedding_architecture(self.model_config.architecture)
        self.embedding_dim: int | None = None  # length of each vector, for embedding models
        if self.is_embedding:
            self.max_model_len = embedding_max_len(self.model_config, config)
            from heron.loader.pooling import load_pooling_config  # torch: encoders only

            pooling = load_pooling_config(model_path)
            self.embedding_dim = pooling.output_dim(self.model_config.hidden_size)
        else:
            self.max_model_len, _ = plan_max_model_len(self.model_config, config)
        self.ready = False  # set once the engine process has loaded the weights
        self.on_fatal = on_fatal
        self.stats = EngineStats()
        self.processor = OutputProcessor(self.tokenizer)
        self._ids = itertools.count()
        self._queues: dict[str, tuple[asyncio.AbstractEventLoop, asyncio.Queue[Any]]] = {}
        # Guards ``_queues`` and the processor: the event loop adds and aborts, the reader
        # thread processes outputs.
        self._lock = threading.Lock()
        self._outbox: SimpleQueue[ToCore] = SimpleQueue()
        self._dead: str | None = None
        self._closing = False
        self._conn, self._replica = core.conn, core
        eos = sorted(self.tokenizer.eos_token_ids)
        self._outbox.put(LoadModel(model_path, config, eos, self.tokenizer.backend.to_str()))
        # The weights load in the engine process while the server already answers /health;
        # /ready and generation answer 503 until the reader sees Ready.
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
        return self._dead is None and self._replica.is_alive()

    def _admit(self) -> None:
        if not self.alive:
            raise EngineDeadError(self._dead or "the engine process has exited")
        if not self.ready:
            raise EngineLoadingError("the model is still loading")
        if self.stats.num_waiting + self._pending() >= self.max_waiting:
            raise QueueFullError("server busy: too many requests are waiting")

    async def generate(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        request_id: str | None = None,
        priority: int = 0,
        lora_request: LoRARequest | None = None,
    ) -> AsyncIterator[GenerationDelta]:
        """Stream the request's deltas (every choice's, interleaved) until each choice has
        finished. ``lora_request`` runs it with that adapter (None: the base model); the
        core loads the adapter on first use and rejects it (ValueError) when it is bad or
        the engine was started without LoRA."""
        self._admit()
        if params.structured_outputs is not None:
            # Validation may take milliseconds (llguidance releases the GIL): off the loop.
            await asyncio.to_thread(params.structured_outputs.check)
        rid = request_id or f"req-{next(self._ids)}"
        queue: asyncio.Queue[Any] = asyncio.Queue()
        with self._lock:
            if rid in self._queues:
                raise ValueError(f"request id {rid!r} is already in use")
            engine_requests = self.processor.add_request(
                rid,
                None,
                list(prompt_token_ids),
                params,
                priority=priority,
                lora_request=lora_request,
            )
            self._queues[rid] = (asyncio.get_running_loop(), queue)
        finished = False
        try:
            for req in engine_requests:
                self._send(req)
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
                engine_ids = self.processor.abort_request(rid)
            if engine_ids and not finished and self.alive:
                self._send(AbortRequests(engine_ids))

    async def embed(
        self, inputs: list[list[int]], request_id: str | None = None
    ) -> list[list[float]]:
        """One vector per input (token ids fitted to ``max_model_len``), batched in the core
        with every other embed request queued at the same time. Raises like ``generate``;
        cancelling the call withdraws the request if it has not run yet."""
        self._admit()
        rid = request_id or f"emb-{next(self._ids)}"
        queue: asyncio.Queue[Any] = asyncio.Queue()
        with self._lock:
            if rid in self._queues:
                raise ValueError(f"request id {rid!r} is already in use")
            self._queues[rid] = (asyncio.get_running_loop(), queue)
        finished = False
        try:
            self._send(EmbedRequest(rid, [list(ids) for ids in inputs]))
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
                self._send(AbortRequests([rid]))

    def _pending(self) -> int:
        # requests submitted but not yet counted by the engine's last stats snapshot
        return max(0, len(self._queues) - self.stats.num_running - self.stats.num_waiting)

    def _send(self, msg: ToCore) -> None:
        """Queue a message for the writer thread: a full pipe (the engine is mid-step) must
        never block the event loop."""
        if self._dead is not None:
            raise EngineDeadError(self._dead)
        self._outbox.put(msg)

    def _write_loop(self) -> None:
        while True:
            msg = self._outbox.get()
            try:
                self._conn.send_bytes(encode(msg))
            except (OSError, EOFError):
                return  # the reader sees the closed pipe and fails every request
            if isinstance(msg, Shutdown):
                return

    # -------------------------------------------------------------------- reader
    def _read_loop(self) -> None:
        while True:
            try:
                self._dispatch(decode_from_core(self._conn.recv_bytes()))
            except Exception as exc:  # EOF, or anything unexpected: the engine is gone
                self._dead = self._dead or f"the engine process has exited ({exc!r})"
                self._fail_all(EngineDeadError(self._dead))
                if not self._closing and self.on_fatal is not None:
                    self.on_fatal(self._dead)
                return

    def _dispatch(self, msg: object) -> None:
        if isinstance(msg, EngineCoreOutputs):
            if msg.stats is not None:
                self.stats = msg.stats
            self._process(msg)
        elif isinstance(msg, EngineStats):
            self.stats = msg
        elif isinstance(msg, Rejected):
            self._fail_sequences([msg.request_id], ValueError(msg.message))
        elif isinstance(msg, Failed):
            self._fail_sequences(msg.request_ids, EngineRequestError(msg.message))
        elif isinstance(msg, Embeddings):
            self._deliver(msg.request_id, msg.vectors)
        elif isinstance(msg, Ready):
            # Both sides plan the context alike; keep the smaller if they ever differ.
            self.max_model_len = min(self.max_model_len, msg.max_model_len)
            if msg.embedding_dim is not None:
                self.embedding_dim = msg.embedding_dim
            self.ready = True
        elif isinstance(msg, Fatal):
            self._dead = msg.message

    def _process(self, msg: EngineCoreOutputs) -> None:
        """Turn one step's token ids into deltas and hand them out; abort in the core what
        stopped on a stop string."""
        with self._lock:
            processed = self.processor.process_outputs(msg.outputs)
            entries = {rid: self._queues.get(rid) for rid in processed.advanced}
        if processed.to_abort:
            with contextlib.suppress(EngineDeadError):
                self._send(AbortRequests(processed.to_abort))
        for delta in processed.deltas:
            entry = entries.get(delta.request_id)
            if entry is not None:
                loop, queue = entry
                with contextlib.suppress(RuntimeError):  # that request's loop has closed
                    loop.call_soon_threadsafe(queue.put_nowait, delta)

    def _fail_sequences(self, engine_ids: list[str], exc: BaseException) -> None:
        """Fail the requests these engine sequences belong to (once each), and abort their
        sibling sequences in the core."""
        with self._lock:
            rids = {self.processor.request_of(e) or e for e in engine_ids}
            siblings = [e for rid in rids for e in self.processor.abort_request(rid)]
        siblings = [e for e in siblings if e not in engine_ids]
        if siblings:
            with contextlib.suppress(EngineDeadError):
                self._send(AbortRequests(siblings))
        for rid in rids:
            self._deliver(rid, exc)

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
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(queue.put_nowait, exc)

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until the weights are loaded (True), the engine died, or the timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while not self.ready and self.alive:
            if deadline is not None and time.monotonic() > deadline:
                return False
            time.sleep(0.05)
        return self.ready

    def shutdown(self, timeout: float = 10.0) -> None:
        self._closing = True
        with contextlib.suppress(EngineDeadError):
            self._send(Shutdown())
        self._replica.join(timeout)
        if self._replica.is_alive():
            self._replica.kill()
            self._replica.join()
