"""Data parallelism: N engine replicas behind one HTTP process, each with its own KV cache.

``DataParallelClient`` holds one ``AsyncEngineClient`` per replica (its own reader and
writer threads and output processor) and the ``Router`` that picks a replica per request.
It has the client's surface, so the server treats it as one engine.

A replica that dies after loading leaves the rotation at once: its in-flight requests fail
in its client with EngineDeadError; those that had streamed nothing are retried here on
another replica, the others end with the error. The replica is restarted through its
factory (the same slot), at most ``MAX_RESTARTS`` times per ``RESTART_WINDOW_S``; the
server's ``on_fatal`` hears of it only when no replica is left.

``rolling_restart`` restarts every replica in turn (``heron.engine.rolling``): a draining
replica gets no new requests, and is restarted once its requests are done; a replica that
restarts in place (``SupervisedReplica``: a Ray actor) is restarted by its supervisor. These
restarts never count against the crash budget.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable

from heron.config import EngineConfig
from heron.engine.core_client import AsyncEngineClient
from heron.engine.protocol import EngineDeadError, EngineLoadingError, EngineStats
from heron.engine.replica import (
    DataParallelPlan,
    EngineReplica,
    ReplicaFactory,
    ReplicaSlot,
    SupervisedReplica,
    plan_slots,
    start_local_replica,
)
from heron.engine.replica_member import ReplicaMember, ReplicaStatus, RestartBudget
from heron.engine.rolling import RollingRestart, RollInProgressError, RollProgress
from heron.engine.router import NoReplicaError, ReplicaLoad, Router
from heron.engine.threads import usable_cpus
from heron.lora.request import LoRARequest
from heron.outputs import GenerationDelta
from heron.sampling_params import SamplingParams

logger = logging.getLogger(__name__)

MAX_RESTARTS = 5
RESTART_WINDOW_S = 300.0
STOP_TIMEOUT_S = 10.0  # a drained replica has this long to exit before it is killed
SUPERVISOR_TIMEOUT_S = 30.0  # and a supervisor (Ray) this long to end its process


class DataParallelClient:
    """``size`` replicas started by ``factory`` (default: local processes pinned to
    disjoint shares of this process's CPUs), routed by ``policy`` ("prefix" or
    "round_robin"). Raises ValueError when the CPUs cannot be shared so."""

    def __init__(
        self,
        model_path: str,
        config: EngineConfig,
        size: int,
        max_waiting: int = 256,
        on_fatal: Callable[[str], None] | None = None,
        chat_template: str | None = None,
        factory: ReplicaFactory | None = None,
        policy: str = "prefix",
    ) -> None:
        self._factory: ReplicaFactory = factory or start_local_replica
        if factory is None:
            slots = plan_slots(size, usable_cpus())
        else:
            slots = [ReplicaSlot(i, size) for i in range(size)]
        self._args = (model_path, config, max_waiting, chat_template)
        self.on_fatal = on_fatal
        self.router = Router(size, config.cache.block_size, policy)
        self._lock = threading.Lock()  # the router and the members' clients
        self._closing = False
        self._budget = RestartBudget(MAX_RESTARTS, RESTART_WINDOW_S)
        self._retired: list[EngineStats] = []  # replaced clients' last stats: counters go on
        self._ids = itertools.count()
        self._roll: RollingRestart | None = None
        replicas: list[EngineReplica] = []
        self._members: list[ReplicaMember] = []
        try:
            for slot in slots:  # every core starts first: they import while we read headers
                replicas.append(self._factory(slot))
            for slot, replica in zip(slots, replicas, strict=True):
                member = ReplicaMember(slot, replica, self._new_client(slot.index, 0, replica))
                self._members.append(member)
        except BaseException:
            for replica in replicas:
                replica.kill()
            raise
        first = self._members[0].client
        self.model_path = model_path
        self.model_config = first.model_config
        self.metadata = first.metadata
        self.tokenizer = first.tokenizer
        self.renderer = first.renderer
        self.config = config
        self.max_waiting = max_waiting
        self.is_embedding = first.is_embedding
        self.size = size

    def _new_client(self, index: int, generation: int, replica: EngineReplica) -> AsyncEngineClient:
        model_path, config, max_waiting, chat_template = self._args

        def died(message: str) -> None:
            self._died(index, generation, message)

        return AsyncEngineClient(model_path, config, max_waiting, died, chat_template, replica)

    # ------------------------------------------------------------------ surface
    @property
    def clients(self) -> list[AsyncEngineClient]:
        return [m.client for m in self._members]

    @property
    def ready(self) -> bool:
        """At least one replica serves."""
        return any(c.ready and c.alive for c in self.clients)

    @property
    def alive(self) -> bool:
        """Some replica is alive or being restarted."""
        return any(m.client.alive or m.restarting for m in self._members)

    @property
    def num_in_flight(self) -> int:
        return sum(c.num_in_flight for c in self.clients)

    @property
    def max_model_len(self) -> int:
        return min(c.max_model_len for c in self.clients)

    @property
    def embedding_dim(self) -> int | None:
        return next((c.embedding_dim for c in self.clients if c.ready), None)

    @property
    def stats(self) -> EngineStats:
        """The replicas' stats summed (KV usage: their mean); counters include replaced
        replicas', so they never go back when one restarts."""
        parts = [c.stats for c in self.clients]
        ever = parts + self._retired
        return EngineStats(
            num_running=sum(s.num_running for s in parts),
            num_waiting=sum(s.num_waiting for s in parts),
            kv_cache_usage=sum(s.kv_cache_usage for s in parts) / len(parts),
            prefix_cache_queries=sum(s.prefix_cache_queries for s in ever),
            prefix_cache_hits=sum(s.prefix_cache_hits for s in ever),
            num_preemptions=sum(s.num_preemptions for s in ever),
            num_free_blocks=sum(s.num_free_blocks for s in parts),
            num_blocks=sum(s.num_blocks for s in parts),
        )

    def replicas(self) -> list[ReplicaStatus]:
        """Each replica's state, in slot order."""
        return [m.status() for m in self._members]

    @property
    def crash_restarts_left(self) -> int:
        """Crash restarts allowed now (``MAX_RESTARTS`` per ``RESTART_WINDOW_S``)."""
        return self._budget.left

    # ------------------------------------------------------------------ routing
    def _loads(self, excluded: set[int], draining_ok: bool) -> list[ReplicaLoad]:
        loads = []
        for i, m in enumerate(self._members):
            c = m.client
            ok = c.ready and c.alive and i not in excluded and (draining_ok or not m.draining)
            loads.append(
                ReplicaLoad(ok, c.num_in_flight, c.stats.num_waiting, c.stats.kv_cache_usage)
            )
        return loads

    def _route(self, digests: list[bytes], excluded: set[int]) -> tuple[int, AsyncEngineClient]:
        """Pick a replica (none of ``excluded``; a draining one only when no other serves)
        and record the prompt's blocks on it. Raises EngineLoadingError while replicas load
        or restart, EngineDeadError when none is left."""
        with self._lock:
            try:
                try:
                    index = self.router.choose(digests, self._loads(excluded, False))
                except NoReplicaError:
                    index = self.router.choose(digests, self._loads(excluded, True))
            except NoReplicaError:
                if any(m.state in ("restarting", "loading") for m in self._members):
                    raise EngineLoadingError("every engine replica is loading") from None
                raise EngineDeadError("every engine replica has exited") from None
            self.router.record(index, digests)
            member = self._members[index]
            member.routed += 1
            return index, member.client

    async def generate(
        self,
        prompt_token_ids: list[int],
        params: SamplingParams,
        request_id: str | None = None,
        priority: int = 0,
        lora_request: LoRARequest | None = None,
    ) -> AsyncIterator[GenerationDelta]:
        """``AsyncEngineClient.generate`` on the routed replica. A replica that dies before
        the first delta is replaced by another (each tried once); after it, the request
        ends with EngineDeadError naming the replica."""
        rid = request_id or f"dp-{next(self._ids)}"
        extra = lora_request.name.encode() if lora_request is not None else None
        digests = self.router.hash_prompt(prompt_token_ids, extra)
        tried: set[int] = set()
        while True:
            index, client = self._route(digests, tried)
            tried.add(index)
            streamed = False
            try:
                async for delta in client.generate(
                    prompt_token_ids, params, rid, priority, lora_request
                ):
                    streamed = True
                    yield delta
                return
            except EngineDeadError as exc:
                if streamed or len(tried) >= self.size:
                    raise EngineDeadError(f"engine replica {index} exited: {exc}") from None
                logger.warning("replica %d died before %s streamed; retrying", index, rid)

    async def embed(
        self, inputs: list[list[int]], request_id: str | None = None
    ) -> list[list[float]]:
        """``AsyncEngineClient.embed`` on the least loaded replica, retried on another if
        that one dies."""
        rid = request_id or f"dp-emb-{next(self._ids)}"
        tried: set[int] = set()
        while True:
            index, client = self._route([], tried)
            tried.add(index)
            try:
                return await client.embed(inputs, rid)
            except EngineDeadError as exc:
                if len(tried) >= self.size:
                    raise EngineDeadError(f"engine replica {index} exited: {exc}") from None

    # ------------------------------------------------------------------ failure
    def _died(self, index: int, generation: int, message: str) -> None:
        """A replica's reader saw its core go away (runs on that reader thread)."""
        with self._lock:
            member = self._members[index] if index < len(self._members) else None
            if self._closing or member is None or member.generation != generation:
                return
            loaded = member.client.ready
            self.router.forget(index)
            if member.draining:  # the rolling restart replaces it next; no crash restart
                logger.warning("engine replica %d exited while draining: %s", index, message)
                return
            if not loaded and generation == 0:
                restart = False  # failed to load: the model fails, as with one engine
            else:
                restart = self._budget.take()
            member.restarting = restart
        if not restart:
            logger.error("engine replica %d exited: %s", index, message)
            if not self.alive and self.on_fatal is not None:
                self.on_fatal(f"engine replica {index} exited: {message}")
            return
        logger.error("engine replica %d exited (%s); restarting it", index, message)
        threading.Thread(
            target=self._restart, args=(member,), name=f"heron-replica-{index}-restart", daemon=True
        ).start()

    def _restart(self, member: ReplicaMember) -> None:
        """Replace a dead replica (its own thread)."""
        try:
            self._replace(member, "crash", stop_timeout=5.0)
        except Exception as exc:
            logger.error("cannot restart engine replica %d: %s", member.slot.index, exc)
        finally:
            member.restarting = False
            if not self.alive and not self._closing and self.on_fatal is not None:
                self.on_fatal(f"every engine replica of {self.model_path} has exited")

    def _replace(self, member: ReplicaMember, reason: str, stop_timeout: float) -> None:
        """Stop ``member``'s core (one that restarts in place, through its supervisor) and
        start its next incarnation through the factory, counted under ``reason``. Mutates
        the member; raises when the factory fails."""
        index = member.slot.index
        with self._lock:
            member.generation += 1  # from here the old client's death report is stale
            generation, old_client, old = member.generation, member.client, member.replica
            self.router.forget(index)
        if isinstance(old, SupervisedReplica) and old.is_alive():
            old.restart_in_place()
            old.join(SUPERVISOR_TIMEOUT_S)  # its channel closes as the old process ends
        with contextlib.suppress(Exception):
            old_client.shutdown(timeout=stop_timeout)
        if self._closing:  # shutdown() stops the old client; start no process it cannot see
            return
        replica = self._factory(member.slot)
        client = self._new_client(index, generation, replica)
        with self._lock:
            if not (closing := self._closing):
                self._retired.append(old_client.stats)
                member.client, member.replica = client, replica
                member.restarts[reason] += 1
        if closing:  # outside the lock: the event loop routes under it
            client.shutdown()

    # ------------------------------------------------------------------ rolling restarts
    def rolling_restart(self, drain_timeout_s: float) -> RollProgress:
        """Start restarting every replica in turn (``heron.engine.rolling``) and return its
        progress at once. Raises NothingToRollError with one replica, RollInProgressError
        while a rolling restart runs."""
        with self._lock:
            if self._roll is not None and self._roll.running:
                raise RollInProgressError(
                    f"a rolling restart of {self.model_path}'s replicas is already running"
                )
            roll = RollingRestart(self, drain_timeout_s, stopped=lambda: self._closing)
            self._roll = roll
        roll.start()
        return roll.progress

    @property
    def last_roll(self) -> RollProgress | None:
        """The running or last rolling restart's progress (None: none yet)."""
        return None if self._roll is None else self._roll.progress

    def serving(self, index: int) -> bool:
        return self._members[index].state == "serving"

    def in_flight(self, index: int) -> int:
        return self._members[index].client.num_in_flight

    def set_draining(self, index: int, draining: bool) -> None:
        with self._lock:
            self._members[index].draining = draining

    def restart_replica(self, index: int) -> None:
        """The rolling restart's step: replace replica ``index`` (not a crash restart), after
        any crash restart of it under way; raises RuntimeError once the client shuts down."""
        member = self._members[index]
        while True:
            with self._lock:
                if self._closing:
                    raise RuntimeError("the engine is shutting down")
                if not member.restarting:
                    member.restarting = True  # claimed: one replacement of a slot at a time
                    break
            time.sleep(0.05)
        try:
            self._replace(member, "rolling", STOP_TIMEOUT_S)
        finally:
            member.restarting = False

    # ------------------------------------------------------------------ lifecycle
    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until every replica has loaded (True), one died, or the timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        for client in self.clients:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not client.wait_ready(left):
                return False
        return True

    def shutdown(self, timeout: float = 10.0) -> None:
        """Stop every replica (in parallel: each may take ``timeout`` to drain) and wait
        for a rolling restart to stop."""
        with self._lock:
            self._closing = True
            clients = self.clients
        threads = [
            threading.Thread(target=c.shutdown, args=(timeout,), daemon=True) for c in clients
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        if self._roll is not None:  # it sees _closing between steps and starts nothing more
            self._roll.join(timeout + STOP_TIMEOUT_S)


def start_engine(
    model_path: str,
    config: EngineConfig,
    max_waiting: int,
    on_fatal: Callable[[str], None] | None,
    chat_template: str | None,
    process: EngineReplica | None,
    plan: DataParallelPlan,
) -> AsyncEngineClient | DataParallelClient:
    """The model's engine: one core (on ``process`` when given) as ever, or ``plan``'s
    replicas behind a router when it is enabled (``process`` is then unused)."""
    if not plan.enabled:
        return AsyncEngineClient(model_path, config, max_waiting, on_fatal, chat_template, process)
    args = (max_waiting, on_fatal, chat_template, plan.factory, plan.policy)
    return DataParallelClient(model_path, config, plan.size, *args)
