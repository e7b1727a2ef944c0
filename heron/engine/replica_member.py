"""One data-parallel slot as the data-parallel client holds it (``ReplicaMember``: the
current replica and its client, through restarts) and as the server reports it
(``ReplicaStatus``: /ready, /metrics, ``GET /admin/replicas``)."""

from __future__ import annotations

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
