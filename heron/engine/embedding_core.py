"""The engine-core loop of an embedding model (run by ``run_engine_core``).

Each step takes every ``EmbedRequest`` that has arrived, checks each request on its own (a
bad one is rejected without failing the others), and embeds all their inputs together:
``EmbeddingEngine.embed_token_ids`` sorts them by length and runs as few padded forwards as
its token budget allows. Each request then gets its vectors back as ``Embeddings``: lists of
Python floats (exactly the float32 values).
"""

from __future__ import annotations

import logging
import traceback
from multiprocessing.connection import Connection

from heron import env
from heron.engine.embedder import EmbeddingEngine
from heron.engine.protocol import (
    AbortRequests,
    Embeddings,
    EmbedRequest,
    EngineCoreRequest,
    EngineStats,
    Failed,
    FromCore,
    Rejected,
    Shutdown,
    decode_to_core,
    encode,
)

logger = logging.getLogger(__name__)

NOT_GENERATIVE = "this model is an embedding model: it does not support generate"


class EmbeddingCore:
    def __init__(self, engine: EmbeddingEngine, conn: Connection) -> None:
        self.engine = engine
        self.conn = conn
        self.pending: dict[str, list[list[int]]] = {}  # request id -> inputs, in arrival order
        self.num_steps = 0
        self.fault_step = env.fault_inject_step()

    def loop(self) -> None:
        while True:
            if not self.pending:  # idle: block until a command arrives
                try:
                    self.conn.poll(None)
                except (EOFError, OSError):
                    return
            try:
                while self.conn.poll(0):
                    if not self.handle(decode_to_core(self.conn.recv_bytes())):
                        return
                if self.pending:
                    self.step()
            except (EOFError, OSError):
                return

    def send(self, msg: FromCore) -> None:
        self.conn.send_bytes(encode(msg))

    def handle(self, msg: object) -> bool:
        """Queue or withdraw a request; False on Shutdown."""
        if isinstance(msg, EmbedRequest):
            rid = msg.request_id
            if rid in self.pending:
                self.send(Rejected(rid, f"request id {rid!r} is already in use"))
            else:
                self.pending[rid] = msg.inputs
        elif isinstance(msg, EngineCoreRequest):
            self.send(Rejected(msg.request_id, NOT_GENERATIVE))
        elif isinstance(msg, AbortRequests):
            for rid in msg.request_ids:
                self.pending.pop(rid, None)
        elif isinstance(msg, Shutdown):
            return False
        return True

    def step(self) -> None:
        """Embed everything pending in one batch and answer each request."""
        self.num_steps += 1
        batch: list[tuple[str, list[list[int]]]] = []
        for rid, inputs in self.pending.items():
            try:
                if not isinstance(inputs, list) or not inputs:
                    raise ValueError("no inputs to embed")
                self.engine.check_inputs(inputs)
            except Exception as exc:
                self.send(Rejected(rid, str(exc)))
                continue
            batch.append((rid, inputs))
        self.pending.clear()
        if not batch:
            return
        self.send(self.stats(len(batch)))
        try:
            if self.fault_step is not None and self.num_steps == self.fault_step:
                raise RuntimeError("injected engine fault (HERON_FAULT_INJECT_STEP)")
            flat = [ids for _, inputs in batch for ids in inputs]
            vectors = self.engine.embed_token_ids(flat)
        except Exception as exc:
            logger.error("embedding step failed:\n%s", traceback.format_exc())
            self.send(Failed([rid for rid, _ in batch], f"engine error: {exc}"))
        else:
            start = 0
            for rid, inputs in batch:
                self.send(Embeddings(rid, vectors[start : start + len(inputs)]))
                start += len(inputs)
        self.send(self.stats(0))

    def stats(self, num_running: int) -> EngineStats:
        """Embedding models have no KV cache: requests in the running step and those
        waiting for the next are all there is to report."""
        return EngineStats(num_running=num_running, num_waiting=len(self.pending))
