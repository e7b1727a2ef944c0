"""One engine replica: an engine core somewhere, reached over a Connection-like channel.

The front end (``AsyncEngineClient``) needs only a channel that sends and receives whole
messages (``multiprocessing.connection.Connection``'s ``send_bytes`` / ``recv_bytes`` /
``poll`` / ``close``), a liveness check and a way to stop the core. Where the core runs is
the replica's business: a spawned local process (a ``heron.engine.process.CoreProcess``,
started here) or, e.g., a Ray actor that connects back over TCP with
``multiprocessing.connection.Client``. A
``ReplicaFactory`` starts a replica for a ``ReplicaSlot``; the data-parallel client calls it
once per slot at start and again, with the same slot, to restart a replica that died or
that a rolling restart replaces.

This module imports nothing heavy: the child imports the engine only in ``_main``, after it
pinned itself to its cores (so torch's thread pool sizes itself to them).
"""

from __future__ import annotations

import logging
import multiprocessing as mp
import os
from collections.abc import Callable
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Protocol, runtime_checkable

from heron.engine.process import CoreProcess, start_spawned

logger = logging.getLogger(__name__)


class CoreChannel(Protocol):
    """The front end's end of the channel to one engine core (``Connection`` is one)."""

    def send_bytes(self, buf: bytes) -> None: ...

    def recv_bytes(self) -> bytes: ...

    def poll(self, timeout: float | None = 0.0) -> bool: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ReplicaSlot:
    """Replica ``index`` of ``size``; stable across restarts (metrics say replica="index").
    ``cpus``: the cores its engine is pinned to (None: not pinned)."""

    index: int
    size: int
    cpus: frozenset[int] | None = None


class EngineReplica(Protocol):
    """A started engine core waiting for ``LoadModel`` on ``conn``."""

    @property
    def conn(self) -> CoreChannel: ...

    def is_alive(self) -> bool: ...

    def kill(self) -> None:
        """Stop the core now; idempotent, never raises."""
        ...

    def join(self, timeout: float | None = None) -> None: ...

    def describe(self) -> str:
        """For logs: where it runs ("pid 1234")."""
        ...


@runtime_checkable
class SupervisedReplica(EngineReplica, Protocol):
    """A replica whose supervisor restarts its core in place (a Ray actor: Ray restarts it
    in its placement-group bundle). A rolling restart asks the supervisor instead of
    stopping the core itself; the factory's next replica for the slot is the new core."""

    def restart_in_place(self) -> None:
        """Have the supervisor end this core's process and start it again; returns at once
        (``is_alive`` turns False when the old process is gone). Never raises."""
        ...


ReplicaFactory = Callable[[ReplicaSlot], EngineReplica]


def plan_slots(size: int, cpus: frozenset[int]) -> list[ReplicaSlot]:
    """Split ``cpus`` into ``size`` disjoint, contiguous shares (the first ones get one more
    when they do not divide). Raises ValueError for fewer CPUs than replicas: two replicas on
    one core would fight over it at every barrier of the kernels."""
    if size < 1:
        raise ValueError("data_parallel_size must be at least 1")
    ordered = sorted(cpus)
    if size > len(ordered):
        raise ValueError(
            f"data_parallel_size={size} needs at least {size} CPUs; this process may use "
            f"{len(ordered)}"
        )
    share, extra = divmod(len(ordered), size)
    slots, start = [], 0
    for i in range(size):
        end = start + share + (1 if i < extra else 0)
        slots.append(ReplicaSlot(i, size, frozenset(ordered[start:end])))
        start = end
    return slots


def start_local_replica(slot: ReplicaSlot) -> CoreProcess:
    """Spawn (never fork: the HTTP process has threads) an engine core pinned to
    ``slot.cpus``. The default ``ReplicaFactory``."""
    ctx = mp.get_context("spawn")
    conn, child = ctx.Pipe()
    cpus = sorted(slot.cpus) if slot.cpus is not None else None
    process = ctx.Process(
        target=_main, args=(child, cpus), daemon=True, name=f"heron-engine-{slot.index}"
    )
    start_spawned(process)
    child.close()
    return CoreProcess(process, conn)


def _main(conn: Connection, cpus: list[int] | None) -> None:
    if cpus is not None:
        # Before torch loads: its OpenMP pool takes its size from here.
        os.sched_setaffinity(0, cpus)
        os.environ["OMP_NUM_THREADS"] = str(len(cpus))
    from heron.engine.core import run_engine_core

    run_engine_core(conn)


ROUTER_POLICIES = ("prefix", "round_robin")


@dataclass(frozen=True, slots=True)
class DataParallelPlan:
    """How a server runs each model: ``size`` replicas started by ``factory`` (None: local
    processes pinned to disjoint cores), requests routed by ``policy``."""

    size: int = 1
    factory: ReplicaFactory | None = None
    policy: str = "prefix"

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError("data_parallel_size must be at least 1")
        if self.policy not in ROUTER_POLICIES:
            raise ValueError(f"unknown router policy {self.policy!r}; use one of {ROUTER_POLICIES}")

    @property
    def enabled(self) -> bool:
        """Whether to use the data-parallel client; one local replica is a plain engine."""
        return self.size > 1 or self.factory is not None
