"""The engine-core process: owns the model and runs ``LLMEngine.step`` in a loop.

It runs apart from the HTTP server so that request parsing, JSON encoding and streaming
never delay a step. Commands arrive and outputs leave as tuples of built-in types over a
local pipe.

Commands: ("add", request_id, prompt_token_ids, params_dict, priority) |
("embed", request_id, list_of_token_id_lists) | ("abort", id) | ("shutdown",).
Replies: ("ready", info) | ("outputs", deltas, stats) | ("embeddings", id, vectors) |
("stats", stats) | ("rejected", id, message) | ("failed", ids, message) | ("fatal", message).

An encoder checkpoint (an embedding model) runs ``EmbeddingCore`` instead: it answers
"embed" and rejects "add"; a generating model rejects "embed".
"""

from __future__ import annotations

import gc
import logging
import signal
import traceback
from dataclasses import asdict
from multiprocessing.connection import Connection
from typing import Any

from heron import env
from heron.config import EngineConfig
from heron.engine.embedder import EmbeddingEngine, is_embedding_checkpoint
from heron.engine.llm_engine import LLMEngine
from heron.outputs import RequestOutput
from heron.sampling_params import SamplingParams
from heron.server.embedding_core import EmbeddingCore

logger = logging.getLogger(__name__)


def run_engine_core(model: str, config: EngineConfig, conn: Connection) -> None:
    """Process entry point. Returns when told to shut down or when the server goes away."""
    # Ctrl-C and SIGTERM reach the whole process group; the server decides when to stop
    # (after draining) and says so with "shutdown" or by closing the pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        engine: LLMEngine | EmbeddingEngine
        if is_embedding_checkpoint(model):
            engine = EmbeddingEngine(model, config)
        else:
            engine = LLMEngine(model, config)
    except Exception as exc:  # the server reports this and exits
        conn.send(("fatal", f"failed to load {model!r}: {exc}"))
        return
    if isinstance(engine, EmbeddingEngine):
        info = {"max_model_len": engine.max_model_len, "embedding_dim": engine.embedding_dim}
        conn.send(("ready", info))
        EmbeddingCore(engine, conn).loop()
        return
    conn.send(("ready", {"max_model_len": engine.max_model_len}))
    # Everything built so far (the model, its modules, the tokenizer) lives as long as the
    # process: keep it out of the collector's sweeps, so that a full collection between two
    # decode steps walks only the requests' objects.
    gc.collect()
    gc.freeze()
    EngineCore(engine, conn).loop()


class EngineCore:
    def __init__(self, engine: LLMEngine, conn: Connection) -> None:
        self.engine = engine
        self.conn = conn
        # (request id, choice index) -> (characters, tokens, logprob entries, finished) sent;
        # a choice that finished early must not be reported finished again while its
        # siblings run on.
        self.sent: dict[tuple[str, int], tuple[int, int, int, bool]] = {}
        self.num_steps = 0
        self.fault_step = env.fault_inject_step()

    def loop(self) -> None:
        while True:
            # Block while idle; otherwise take whatever commands are waiting, then step.
            if not self.engine.has_unfinished_requests():
                try:
                    self.conn.poll(None)
                except (EOFError, OSError):
                    return
            try:
                handled = 0
                while self.conn.poll(0):
                    handled += 1
                    if not self.handle(self.conn.recv()):
                        return
                if self.engine.has_unfinished_requests():
                    self.step()
                elif handled:
                    # e.g. the last request was aborted: report the freed cache right away
                    self.conn.send(("stats", asdict(self.stats())))
            except (EOFError, OSError):
                return

    def handle(self, msg: tuple[Any, ...]) -> bool:
        kind = msg[0]
        if kind == "add":
            _, rid, prompt_ids, params, priority = msg
            try:
                self.engine.add_request(rid, prompt_ids, SamplingParams(**params), priority)
            except Exception as exc:  # bad input must never take the engine down
                self.engine.abort(rid)
                self.conn.send(("rejected", rid, str(exc)))
        elif kind == "embed":
            self.conn.send(("rejected", msg[1], "this model does not support embeddings"))
        elif kind == "abort":
            self.engine.abort(msg[1])
            self._forget(msg[1])
        elif kind == "shutdown":
            return False
        return True

    def step(self) -> None:
        self.num_steps += 1
        try:
            if self.fault_step is not None and self.num_steps == self.fault_step:
                raise RuntimeError("injected engine fault (HERON_FAULT_INJECT_STEP)")
            outputs = self.engine.step()
            deltas = [d for out in outputs for d in self._deltas(out)]
        except Exception as exc:
            # Fail the requests that were in flight, keep the process and the server alive.
            logger.error("engine step failed:\n%s", traceback.format_exc())
            ids = list(self.engine._groups)
            for rid in ids:
                self.engine.abort(rid)
                self._forget(rid)
            self.conn.send(("failed", ids, f"engine error: {exc}"))
            return
        self.conn.send(("outputs", deltas, asdict(self.stats())))

    def _deltas(self, out: RequestOutput) -> list[tuple[Any, ...]]:
        deltas = []
        for c in out.outputs:
            key = (out.request_id, c.index)
            n_chars, n_tokens, n_lp, done = self.sent.get(key, (0, 0, 0, False))
            if done:
                continue
            new_text = c.text[n_chars:]
            new_ids = c.token_ids[n_tokens:]
            if not new_text and not new_ids and c.finish_reason is None:
                continue
            lps = None
            if c.logprobs is not None:
                lps = [
                    {tid: (lp.logprob, lp.rank, lp.decoded_token) for tid, lp in entry.items()}
                    for entry in c.logprobs[n_lp:]
                ]
            n_lp_total = len(c.logprobs) if c.logprobs is not None else 0
            self.sent[key] = (
                len(c.text),
                len(c.token_ids),
                n_lp_total,
                c.finish_reason is not None,
            )
            deltas.append(
                (
                    out.request_id,
                    c.index,
                    new_text,
                    new_ids,
                    lps,
                    c.finish_reason,
                    c.stop_reason,
                    len(out.prompt_token_ids),
                    out.num_cached_tokens,
                    len(c.token_ids),
                )
            )
        if out.finished:
            self._forget(out.request_id)
        return deltas

    def _forget(self, rid: str) -> None:
        for key in [k for k in self.sent if k[0] == rid]:
            del self.sent[key]

    def stats(self) -> Any:
        from heron.server.protocol import EngineStats

        kv = self.engine.kv_manager
        pool = kv.block_pool
        return EngineStats(
            num_running=self.engine.scheduler.num_running,
            num_waiting=self.engine.scheduler.num_waiting,
            kv_cache_usage=kv.usage,
            prefix_cache_queries=pool.prefix_queries,
            prefix_cache_hits=pool.prefix_hits,
            num_preemptions=self.engine.scheduler.num_preemptions,
            num_free_blocks=kv.num_free_blocks,
            num_blocks=kv.num_blocks,
        )
