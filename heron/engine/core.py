"""The engine core: the model, the KV cache and the scheduler, stepped in a loop.

``EngineCore`` works in token ids only. It takes ``EngineCoreRequest``s, and each ``step``
returns, per request that advanced, the new token ids (and their raw logprobs when asked),
a finish reason and counters: work proportional to the step's new tokens, never to the
length of an output. It never detokenizes and never matches stop strings; the front end's
``OutputProcessor`` does, and aborts a request that hit one.

``run_engine_core`` is the engine-core process: it answers ``LoadModel`` with ``Ready`` (or
``Fatal``), then loops: take every message waiting on the pipe, step, send the outputs.
An encoder checkpoint (an embedding model) runs ``EmbeddingCore``'s loop instead.
"""

from __future__ import annotations

import gc
import logging
import signal
import time
import traceback
from collections.abc import Iterable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from multiprocessing.connection import Connection
from typing import Any

from heron import env
from heron.config import CacheConfig, EngineConfig
from heron.engine.prompt_logprobs import PromptLogprobsCollector
from heron.engine.protocol import (
    PROTOCOL_VERSION,
    AbortRequests,
    EmbedRequest,
    EngineCoreOutput,
    EngineCoreOutputs,
    EngineCoreRequest,
    EngineStats,
    Failed,
    Fatal,
    LoadModel,
    Ready,
    Rejected,
    Shutdown,
    decode_to_core,
    encode,
)
from heron.engine.threads import make_governor
from heron.engine.token_logprobs import row_logprobs
from heron.kvcache import KVCacheManager
from heron.kvcache.plan import plan_max_model_len
from heron.loader import Checkpoint, load_checkpoint
from heron.lora.manager import lora_cache_key
from heron.lora.request import LoRARequest
from heron.proposer.speculator import Speculator
from heron.request import FINISH_REASONS, Request, RequestStatus
from heron.runner import ModelRunner
from heron.scheduler import Scheduler
from heron.structured.compiler import GrammarCompiler
from heron.structured.drafts import advance_runs

logger = logging.getLogger(__name__)


class EngineCore:
    """Owns the runner, the KV cache manager and the scheduler of one loaded model."""

    def __init__(
        self,
        checkpoint: Checkpoint,
        config: EngineConfig,
        eos_token_ids: Iterable[int] = (),
        tokenizer_json: str | None = None,
    ) -> None:
        t0 = time.perf_counter()
        self.config = config
        self.model_config = checkpoint.config
        self.runner = ModelRunner(
            self.model_config, checkpoint.weights, config, source=checkpoint.path
        )
        cache: CacheConfig = config.cache
        self.kv_manager = KVCacheManager(
            self.runner.num_blocks, cache.block_size, enable_caching=cache.enable_prefix_caching
        )
        max_loras = config.lora.max_loras if config.lora is not None else None
        self.scheduler = Scheduler(config.scheduler, self.kv_manager, max_loras)
        self.max_model_len, wanted = plan_max_model_len(self.model_config, config)
        if self.max_model_len < wanted:
            logger.warning(
                "max_model_len lowered from %d to %d to fit the KV cache and the model",
                wanted,
                self.max_model_len,
            )
        self.eos_token_ids = frozenset(eos_token_ids) | frozenset(self.model_config.eos_token_ids)
        # Structured outputs: constraints compile on the compiler's thread; their requests
        # wait here (not in the scheduler) until their matcher is ready.
        self.grammars: GrammarCompiler | None = None
        if tokenizer_json is not None:
            self.grammars = GrammarCompiler(
                tokenizer_json, self.model_config.vocab_size, self.eos_token_ids
            )
        self.compiling: dict[str, tuple[Request, Future[Any]]] = {}
        self.rejected: list[Rejected] = []  # constraints that failed to compile
        self.prompt_logprobs = PromptLogprobsCollector()
        self.speculator: Speculator | None = None
        if config.speculative is not None:
            self.speculator = Speculator(
                config.speculative, config, target_config=self.model_config
            )
        logger.info("engine core ready in %.1f s", time.perf_counter() - t0)

    # ---------------------------------------------------------------- requests
    def add_request(self, request: EngineCoreRequest) -> None:
        """Validate and queue one sequence. Mutates the scheduler's waiting queue. Raises
        ValueError for bad input (an empty or over-long prompt, token ids outside the
        vocabulary, a live id, a priority without the priority policy)."""
        rid, token_ids, params = (
            request.request_id,
            request.prompt_token_ids,
            request.sampling_params,
        )
        vocab = self.model_config.vocab_size
        if rid in self.scheduler.requests or rid in self.compiling:
            raise ValueError(f"request id {rid!r} is already in use")
        if not token_ids:
            raise ValueError("the prompt is empty")
        if any(
            isinstance(t, bool) or not isinstance(t, int) or not 0 <= t < vocab for t in token_ids
        ):
            raise ValueError(f"prompt token ids must be integers in [0, {vocab})")
        if any(t >= vocab for t in params.stop_token_ids):
            raise ValueError(f"stop_token_ids must be in [0, {vocab})")
        if params.logit_bias and any(t >= vocab for t in params.logit_bias):
            raise ValueError(f"logit_bias token ids must be in [0, {vocab})")
        if params.prompt_logprobs is not None and request.fork_of is not None:
            raise ValueError("a forked sibling cannot ask for prompt_logprobs (its parent does)")
        if request.priority != 0 and self.config.scheduler.policy != "priority":
            raise ValueError("priority is set but the scheduling policy is not 'priority'")
        if len(token_ids) >= self.max_model_len:
            raise ValueError(
                f"the prompt has {len(token_ids)} tokens, but this model's context length is "
                f"{self.max_model_len} (including at least one output token)"
            )
        room = self.max_model_len - len(token_ids)
        max_tokens = room if params.max_tokens is None else min(params.max_tokens, room)
        parent = self.scheduler.requests.get(request.fork_of) if request.fork_of else None
        cache_salt = request.cache_salt.encode() if request.cache_salt else None
        if request.lora is not None:
            cache_salt = lora_cache_key(self._add_lora(request.lora), cache_salt)
        req = Request(
            request_id=rid,
            prompt_token_ids=list(token_ids),
            sampling_params=params,
            eos_token_ids=self.eos_token_ids,
            max_tokens=max_tokens,
            priority=request.priority,
            arrival_time=request.arrival_time,
            fork_parent=parent,
            cache_salt=cache_salt,
            lora_request=request.lora,
        )
        if params.structured_outputs is None:
            self.scheduler.add_request(req)
            return
        if self.grammars is None:
            raise ValueError("this engine was started without a tokenizer: no structured outputs")
        self.compiling[rid] = (req, self.grammars.submit(params.structured_outputs))

    def _add_lora(self, lora: LoRARequest) -> bytes:
        """Load (or find) a request's adapter; returns its digest. Raises ValueError without
        LoRA, LoRAError for a bad adapter."""
        manager = self.runner.lora
        if manager is None:
            raise ValueError("this engine was started without LoRA support (enable_lora)")
        in_use = {r.lora_request.int_id for r in self.scheduler.requests.values() if r.lora_request}
        in_use.update(r.lora_request.int_id for r, _ in self.compiling.values() if r.lora_request)
        return manager.add(lora, in_use)

    def _admit_compiled(self) -> None:
        """Move requests whose grammar has compiled into the scheduler; record those whose
        grammar failed in ``rejected``. When nothing else can run, waits briefly for a
        compile instead of spinning."""
        if not self.compiling:
            return
        if not self.scheduler.has_unfinished():
            wait([f for _, f in self.compiling.values()], 0.05, FIRST_COMPLETED)
        for rid, (req, future) in list(self.compiling.items()):
            if not future.done():
                continue
            del self.compiling[rid]
            try:
                req.grammar = future.result()
            except Exception as exc:
                self.rejected.append(Rejected(rid, str(exc)))
                continue
            self.scheduler.add_request(req)

    def take_rejected(self) -> list[Rejected]:
        """The requests refused since the last call (their constraint did not compile)."""
        rejected, self.rejected = self.rejected, []
        return rejected

    def abort_requests(self, request_ids: Iterable[str]) -> None:
        """Finish these requests wherever they are; their KV blocks are freed at once.
        Unknown or finished ids are ignored. Produces no output."""
        request_ids = list(request_ids)
        for rid in request_ids:
            pending = self.compiling.pop(rid, None)
            if pending is not None:
                pending[1].cancel()
        if self.speculator is not None:
            live = (self.scheduler.requests.get(rid) for rid in request_ids)
            self.speculator.on_finished([r for r in live if r is not None])
        self.scheduler.finish_requests(request_ids, RequestStatus.FINISHED_ABORTED)
        self.prompt_logprobs.drop(request_ids)

    def abort_all(self) -> list[str]:
        """Abort every live request (after a failed step); returns their ids."""
        ids = list(self.scheduler.requests) + list(self.compiling)
        self.abort_requests(ids)
        return ids

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished() or bool(self.compiling)

    # -------------------------------------------------------------------- step
    def step(self) -> list[EngineCoreOutput]:
        """Schedule, run one batched forward, sample, advance the requests. Returns one
        output per request that sampled a token this step (a prefill chunk in the middle of
        a prompt samples nothing), with finish reasons for those that ended. A request whose
        grammar is complete finishes with ``stop``. A request that asked for prompt logprobs
        gets them with its first output. With speculation, drafts are proposed first and a
        row's output holds its accepted drafts and one more token, cut at a stop."""
        self._admit_compiled()
        if self.speculator is not None:
            self.speculator.propose(self.scheduler.running)
        sched = self.scheduler.schedule()
        if sched.is_empty:
            return []
        rows, sampled = self.runner.execute(sched)
        self.prompt_logprobs.add(sampled.prompt_logprobs)
        runs = sampled.runs if sampled.runs is not None else [[t] for t in sampled.token_ids]
        if self.speculator is not None and sampled.runs is not None:
            self.speculator.record(rows, runs)
        requests = [row.request for row in rows]
        runs, complete = advance_runs(requests, runs)
        before = [r.num_output_tokens for r in requests]
        finished = self.scheduler.update_from_output(
            sched, {r.request_id: run for r, run in zip(requests, runs, strict=True)}
        )
        if complete:
            self.scheduler.finish_requests(
                [r.request_id for r in complete if not r.is_finished],
                RequestStatus.FINISHED_STOPPED,
            )
        if self.speculator is not None and (finished or complete):
            self.speculator.on_finished(list({id(r): r for r in finished + complete}.values()))
        outputs: list[EngineCoreOutput] = []
        for i, req in enumerate(requests):
            new = req.output_token_ids[before[i] :]
            out = EngineCoreOutput(req.request_id, new, row_logprobs(req, sampled, i, len(new)))
            out.prompt_logprobs = self.prompt_logprobs.take(req, first_output=before[i] == 0)
            out.num_cached_tokens = req.num_cached_tokens
            if req.is_finished:
                out.finish_reason = FINISH_REASONS[req.status]
                if isinstance(req.stop_reason, int):
                    out.stop_reason = req.stop_reason
            outputs.append(out)
        return outputs

    def stats(self) -> EngineStats:
        kv = self.kv_manager
        pool = kv.block_pool
        return EngineStats(
            num_running=self.scheduler.num_running,
            num_waiting=self.scheduler.num_waiting,
            kv_cache_usage=kv.usage,
            prefix_cache_queries=pool.prefix_queries,
            prefix_cache_hits=pool.prefix_hits,
            num_preemptions=self.scheduler.num_preemptions,
            num_free_blocks=kv.num_free_blocks,
            num_blocks=kv.num_blocks,
            **(self.speculator.stats_fields() if self.speculator is not None else {}),
        )


# ------------------------------------------------------------------------ the process
def run_engine_core(conn: Connection) -> None:
    """Process entry point. Waits for ``LoadModel``, loads, answers ``Ready`` or ``Fatal``,
    then serves until told to shut down or the front end goes away."""
    # Ctrl-C and SIGTERM reach the whole process group; the server decides when to stop
    # (after draining) and says so with Shutdown or by closing the pipe.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        msg = decode_to_core(conn.recv_bytes())
    except (EOFError, OSError):
        return
    if not isinstance(msg, LoadModel) or msg.version != PROTOCOL_VERSION:
        conn.send_bytes(encode(Fatal(f"expected LoadModel version {PROTOCOL_VERSION}")))
        return
    from heron.engine.embedder import EmbeddingEngine, is_embedding_checkpoint

    try:
        if is_embedding_checkpoint(msg.path):
            embedder = EmbeddingEngine(msg.path, msg.config)
        else:
            core = EngineCore(
                load_checkpoint(msg.path), msg.config, msg.eos_token_ids, msg.tokenizer_json
            )
    except Exception as exc:  # the server reports this and exits
        conn.send_bytes(encode(Fatal(f"failed to load {msg.path!r}: {exc}")))
        return
    if is_embedding_checkpoint(msg.path):
        from heron.engine.embedding_core import EmbeddingCore

        conn.send_bytes(encode(Ready(embedder.max_model_len, embedder.embedding_dim)))
        EmbeddingCore(embedder, conn).loop()
        return
    conn.send_bytes(encode(Ready(core.max_model_len)))
    # Everything built so far (the model, its modules) lives as long as the process: keep it
    # out of the collector's sweeps, so that a full collection between two decode steps
    # walks only the requests' objects.
    gc.collect()
    gc.freeze()
    EngineCoreProc(core, conn).loop()


class EngineCoreProc:
    """The message loop around an ``EngineCore``: one step whenever requests are live."""

    def __init__(self, core: EngineCore, conn: Connection) -> None:
        self.core = core
        self.conn = conn
        self.num_steps = 0
        self.fault_step = env.fault_inject_step()
        self.governor = make_governor(core.config)

    def loop(self) -> None:
        core = self.core
        while True:
            # Block while idle; otherwise take whatever messages are waiting, then step.
            try:
                if not core.has_unfinished_requests():
                    self.conn.poll(None)
                handled = 0
                while self.conn.poll(0):
                    handled += 1
                    if not self.handle(decode_to_core(self.conn.recv_bytes())):
                        return
                if core.has_unfinished_requests():
                    self.step()
                elif handled:
                    # e.g. the last request was aborted: report the freed cache right away
                    self.conn.send_bytes(encode(core.stats()))
            except (EOFError, OSError):
                return

    def handle(self, msg: object) -> bool:
        """Apply one message; False on Shutdown."""
        if isinstance(msg, EngineCoreRequest):
            try:
                self.core.add_request(msg)
            except Exception as exc:  # bad input must never take the engine down
                self.core.abort_requests([msg.request_id])
                self.conn.send_bytes(encode(Rejected(msg.request_id, str(exc))))
        elif isinstance(msg, AbortRequests):
            self.core.abort_requests(msg.request_ids)
        elif isinstance(msg, EmbedRequest):
            message = "this model does not support embeddings"
            self.conn.send_bytes(encode(Rejected(msg.request_id, message)))
        elif isinstance(msg, Shutdown):
            return False
        return True

    def step(self) -> None:
        self.num_steps += 1
        try:
            if self.fault_step is not None and self.num_steps == self.fault_step:
                raise RuntimeError("injected engine fault (HERON_FAULT_INJECT_STEP)")
            if self.governor is not None:
                self.governor.tick()
            outputs = self.core.step()
            for rejected in self.core.take_rejected():
                self.conn.send_bytes(encode(rejected))
        except Exception as exc:
            # Fail the requests that were in flight, keep the process and the server alive.
            logger.error("engine step failed:\n%s", traceback.format_exc())
            ids = self.core.abort_all()
            self.conn.send_bytes(encode(Failed(ids, f"engine error: {exc}")))
            return
        self.conn.send_bytes(encode(EngineCoreOutputs(outputs, self.core.stats())))
