"""One data-parallel slot as the data-parallel client holds it (``ReplicaMember``: the
current replica and its client, through restarts) and as the server reports it
(``ReplicaStatus``: /ready, /metrics, ``GET /admin/replicas``), and the slots' shared
crash-restart budget (``RestartBudget``)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from heron.engine.core_client import AsyncEngineClient
from heron.engine.protocol import EngineStats
from heron.engine.replica import EngineReplica, ReplicaSlot

RESTART_REASONS = ("crash", "rolling")


@dataclass(frozen=True, slots=True)
class ReplicaStatus:
    """One replica. ``up``: it takes requests (``state`` is "serving"); ``engine_id``
    changes when it restarts; ``where``: the replica's own description (its pid);
    ``restarts``: by reason, since the server started."""

    index: int
    up: bool
    engine_id: int
    routed: int
    stats: EngineStats
    state: str = "serving"
    where: str = ""
    in_flight: int = 0
    restarts: dict[str, int] = field(default_factory=dict)


@dataclass(slots=True)
class ReplicaMember:
    """One slot's current replica and client; ``generation`` counts its restarts (a late
    death report from an older client is ignored). The data-parallel client mutates it
    under its lock."""

    slot: ReplicaSlot
    replica: EngineReplica
    client: AsyncEngineClient
    generation: int = 0
    restarting: bool = False  # between a death (or a rolling step) and the new client
    draining: bool = False  # a rolling restart keeps new requests off it
    routed: int = 0  # requests routed to this slot, restarts included
    restarts: dict[str, int] = field(default_factory=lambda: dict.fromkeys(RESTART_REASONS, 0))

    @property
    def state(self) -> str:
        """serving, draining, restarting, loading (its first start) or down."""
        if self.restarting:
            return "restarting"
        if self.draining:
            return "draining"
        if self.client.alive:
            if self.client.ready:
                return "serving"
            return "loading" if self.generation == 0 else "restarting"
        return "down"

    def status(self) -> ReplicaStatus:
        c, state = self.client, self.state
        return ReplicaStatus(
            self.slot.index,
            state == "serving",
            id(c),
            self.routed,
            c.stats,
            state,
            self.replica.describe(),
            c.num_in_flight,
            dict(self.restarts),
        )


@dataclass(slots=True)
class RestartBudget:
    """At most ``limit`` crash restarts per ``window_s`` seconds (monotonic clock); rolling
    restarts never spend it. The data-parallel client uses it under its lock."""

    limit: int
    window_s: float
    times: list[float] = field(default_factory=list)

    @property
    def left(self) -> int:
        """Restarts ``take`` would allow now."""
        now = time.monotonic()
        return self.limit - sum(now - t < self.window_s for t in self.times)

    def take(self) -> bool:
        """Spend one restart (True), or False when none is left. Drops expired ``times``."""
        now = time.monotonic()
        self.times = [t for t in self.times if now - t < self.window_s]
        if len(self.times) >= self.limit:
            return False
        self.times.append(now)
        return True
