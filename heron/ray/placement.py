"""Engine replicas placed on a Ray cluster: one placement-group bundle and one actor each.

``RayReplicas.start`` connects this process to the cluster as a Ray driver, opens the
listener the actors dial back to, reserves the bundles (``SPREAD``: replicas on different
nodes where the cluster allows), starts the actors and checks that every node can read the
model, before the server listens. ``factory`` is the data-parallel client's
``ReplicaFactory``. Health and restarts are Ray's: an actor whose process dies is restarted
(``max_restarts=-1``) and its ``serve`` call retried; a node that is lost has its bundles
placed again where resources allow. A rolling restart has Ray restart each actor in turn
(``restart_actor``). ``close`` releases everything.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from dataclasses import dataclass
from typing import Any

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from heron.engine.replica import ReplicaSlot
from heron.ray.actor import EngineActor, model_files
from heron.ray.listener import ReplicaListener
from heron.ray.remote import RemoteReplica

logger = logging.getLogger(__name__)

ADVICE = (
    "every Ray node must hold the model's files at the same path as this server: put the "
    "store on a filesystem mounted at the same path on every node (HERON_MODELS), or run "
    "`heron pull MODEL` with the same HERON_MODELS on each node (docs/scale-out.md)"
)


@dataclass(frozen=True, slots=True)
class RayPlacement:
    """Where and how big: ``size`` replicas of ``cpus_per_replica`` CPUs on the cluster at
    ``address``; actors dial ``listen_host:listen_port`` (host None: this node's IP in the
    cluster; port 0: any free one)."""

    address: str
    size: int = 1
    cpus_per_replica: int = 1
    listen_host: str | None = None
    listen_port: int = 0
    strategy: str = "SPREAD"
    ready_timeout_s: float = 120.0

    def __post_init__(self) -> None:
        if self.size < 1:
            raise ValueError("data_parallel_size must be at least 1")
        if self.cpus_per_replica < 1:
            raise ValueError("--ray-cpus-per-replica must be at least 1")
        if not 0 <= self.listen_port < 65536:
            raise ValueError(f"listen port must be in 0..65535, got {self.listen_port}")


class RayReplicas:
    """The actors, their placement group and the listener of one server."""

    def __init__(self, placement: RayPlacement) -> None:
        self.placement = placement
        self.listener: ReplicaListener | None = None
        self.group: Any = None
        self.actors: list[Any] = []
        self._serving: dict[Any, int] = {}  # serve() ObjectRef -> replica index
        self._restarted: set[int] = set()  # replicas whose actor restart_actor killed
        self._closed = threading.Event()
        self._watcher: threading.Thread | None = None

    @classmethod
    def start(cls, placement: RayPlacement, model_path: str) -> RayReplicas:
        """Place the replicas and start them serving ``model_path``. Raises ValueError when
        the cluster cannot be reached, lacks the resources within ``ready_timeout_s``, or a
        node cannot read the model."""
        replicas = cls(placement)
        try:
            replicas._start(model_path)
        except BaseException:
            replicas.close()
            raise
        return replicas

    def _start(self, model_path: str) -> None:
        p = self.placement
        try:
            ray.init(address=p.address, log_to_driver=True, logging_level=logging.WARNING)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ValueError(f"cannot connect to the Ray cluster at {p.address}: {exc}") from None
        host = p.listen_host or str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]
        self.listener = ReplicaListener(host, p.listen_port, p.size)
        logger.info("engine replicas dial back to %s:%d", *self.listener.address)
        bundles = [{"CPU": float(p.cpus_per_replica)} for _ in range(p.size)]
        self.group = placement_group(bundles, strategy=p.strategy)
        ready, _ = ray.wait([self.group.ready()], timeout=p.ready_timeout_s)
        if not ready:
            total = ray.cluster_resources()  # type: ignore[no-untyped-call]
            free = ray.available_resources()  # type: ignore[no-untyped-call]
            raise ValueError(
                f"the Ray cluster could not place {p.size} replicas of {p.cpus_per_replica} "
                f"CPUs each within {p.ready_timeout_s:.0f} s (it has {total}, "
                f"available: {free}); add nodes or lower "
                "--data-parallel-size / --ray-cpus-per-replica"
            )
        remote_actor = ray.remote(EngineActor)
        for index in range(p.size):
            strategy = PlacementGroupSchedulingStrategy(self.group, index)
            self.actors.append(
                remote_actor.options(
                    num_cpus=p.cpus_per_replica,
                    max_restarts=-1,
                    max_task_retries=-1,
                    scheduling_strategy=strategy,
                ).remote(index, self.listener.address, self.listener.authkey)
            )
        expected = model_files(model_path)
        checks = [a.check_model.remote(model_path, expected) for a in self.actors]
        try:
            problems = ray.get(checks, timeout=p.ready_timeout_s)
        except ray.exceptions.RayError as exc:  # a timeout or an actor that died starting
            # An actor that cannot start: most often Heron missing (or another version) in
            # the Python environment that runs `ray start` on its node.
            raise ValueError(
                f"the engine actors did not start: {exc}; every node needs this Heron and Ray "
                "installed in the Python that runs `ray start` (docs/scale-out.md)"
            ) from None
        found = [f"replica {i}: {why}" for i, why in enumerate(problems) if why is not None]
        if found:
            raise ValueError(
                f"the model cannot be read on the cluster ({'; '.join(found)}): {ADVICE}"
            )
        self._serving = {a.serve.remote(): i for i, a in enumerate(self.actors)}
        self._watcher = threading.Thread(target=self._watch, name="heron-ray-watch", daemon=True)
        self._watcher.start()

    def factory(self, slot: ReplicaSlot) -> RemoteReplica:
        """The ``ReplicaFactory``: replica ``slot.index``, served by its actor's next
        connection (a restart after its death included)."""
        if self.listener is None or slot.size != self.placement.size:
            raise ValueError(f"{slot.size} replicas asked for, {self.placement.size} placed")
        index = slot.index
        return RemoteReplica(self.listener, index, lambda: self.restart_actor(index))

    def restart_actor(self, index: int) -> None:
        """Have Ray restart replica ``index``'s actor: ``ray.kill(no_restart=False)`` ends its
        process and Ray starts it again in its bundle (``max_restarts``), where Ray retries its
        ``serve`` call (``max_task_retries``) and it dials back. Should Ray fail that call
        instead, the watcher calls it again. Raises what ``ray.kill`` raises."""
        self._restarted.add(index)
        ray.kill(self.actors[index], no_restart=False)

    def _watch(self) -> None:
        """Keep every actor serving. A ``serve`` call returns when its actor could not reach
        the listener for a while (a network partition): call it again. One that raises means
        Ray gave up on the actor: say so, and fail the replica's waiters instead of leaving
        them waiting."""
        pending = list(self._serving)
        while pending and not self._closed.is_set():
            done, pending = ray.wait(pending, num_returns=1, timeout=1.0)
            for ref in done:
                index = self._serving.pop(ref)
                try:
                    ray.get(ref)
                except Exception as exc:  # RayActorError and kin
                    actors = self.actors  # emptied by close()
                    if self._closed.is_set() or self.listener is None or index >= len(actors):
                        return
                    if index in self._restarted:  # killed for a rolling restart: Ray restarts it
                        self._restarted.discard(index)
                        logger.info("engine replica %d is restarted by Ray", index)
                        again = actors[index].serve.remote()
                        self._serving[again] = index
                        pending.append(again)
                        continue
                    # any other failure: the actor is gone for good
                    logger.error("engine replica %d will not come back: %s", index, exc)
                    self.listener.fail(index, f"engine replica {index}: its Ray actor failed")
                    continue
                actors = self.actors  # emptied by close()
                if self._closed.is_set() or index >= len(actors):
                    return
                logger.warning("engine replica %d lost the server; it dials again", index)
                again = actors[index].serve.remote()
                self._serving[again] = index
                pending.append(again)

    def close(self) -> None:
        """Kill the actors (for good), release their bundles, close the listener and leave
        the cluster. Idempotent; never raises."""
        self._closed.set()
        for actor in self.actors:
            with contextlib.suppress(Exception):
                ray.kill(actor, no_restart=True)
        self.actors = []
        if self.group is not None:
            with contextlib.suppress(Exception):
                remove_placement_group(self.group)
            self.group = None
        if self.listener is not None:
            self.listener.close()
        if self._watcher is not None:
            self._watcher.join(5)
        with contextlib.suppress(Exception):
            ray.shutdown()
