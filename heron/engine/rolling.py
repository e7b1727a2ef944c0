"""Rolling restarts of data-parallel replicas: one at a time, without failing a request.

Replicas out of service (down, loading, or restarting after a crash) go first: restarting
one takes nothing away. Then, for each serving replica in slot order: wait until every other
replica serves (never two out at once: one that goes out during the drain sends it back to
waiting), mark it draining (the router sends it nothing new, as if it were down, though it
is not), wait for its in-flight requests to finish (at most ``drain_timeout_s``: what still
runs then ends as on any replica exit: retried elsewhere if it had streamed nothing, else
with the ``engine replica i exited`` error), restart it, and wait until it serves again.
A replica that does not come back within ``ready_timeout_s`` stops the roll there: the
replicas after it are left as they are.

How a replica restarts is the target's business (``Rollable.restart_replica``): through the
replica factory for a local process, through Ray's own actor restart for a Ray replica.
These restarts never count against the crash-restart budget.

``RollingRestart`` runs on a thread of its own and drives only the ``Rollable`` protocol
(the data-parallel client implements it), so this module imports nothing of the engine.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

logger = logging.getLogger(__name__)

# A restarted replica imports torch and loads its weights (on Ray, a new actor process first).
READY_TIMEOUT_S = 600.0
POLL_S = 0.05


class Rollable(Protocol):
    """What a rolling restart needs of the replicas it rolls."""

    @property
    def size(self) -> int: ...

    def serving(self, index: int) -> bool:
        """Whether replica ``index`` takes requests now."""
        ...

    def in_flight(self, index: int) -> int:
        """Requests running on replica ``index``."""
        ...

    def set_draining(self, index: int, draining: bool) -> None:
        """Keep new requests off replica ``index`` (True) or let them back (False)."""
        ...

    def restart_replica(self, index: int) -> None:
        """Stop replica ``index`` and start its next incarnation (returns once started, not
        loaded). Raises when it cannot be started."""
        ...


class RollInProgressError(RuntimeError):
    """A rolling restart is already running on these replicas."""


class NothingToRollError(RuntimeError):
    """One replica: restarting it would leave nothing serving."""


@dataclass(slots=True)
class RollProgress:
    """Where a rolling restart is. ``phase``: waiting (for the other replicas to serve),
    draining, restarting (until the new incarnation serves), done or failed."""

    order: list[int]
    drain_timeout_s: float
    done: list[int] = field(default_factory=list)
    current: int | None = None
    phase: str = "waiting"
    error: str | None = None
    started_at: float = field(default_factory=time.time)
    finished_at: float | None = None

    @property
    def running(self) -> bool:
        return self.phase not in ("done", "failed")

    def to_json(self) -> dict[str, object]:
        """The progress as the admin API shows it."""
        return {
            "status": "running" if self.running else self.phase,
            "order": list(self.order),
            "restarted": list(self.done),
            "current": self.current,
            "phase": self.phase,
            "drain_timeout": self.drain_timeout_s,
            "error": self.error,
            "started_at": self.started_at,
            "finished_at": self.finished_at,
        }


class RollingRestart:
    """One rolling restart of ``target``'s replicas. ``start`` runs it on a thread;
    ``progress`` is updated as it goes (read it from any thread)."""

    def __init__(
        self,
        target: Rollable,
        drain_timeout_s: float,
        ready_timeout_s: float = READY_TIMEOUT_S,
        stopped: Callable[[], bool] = lambda: False,
    ) -> None:
        if target.size < 2:
            raise NothingToRollError(
                "one engine replica: restarting it would leave nothing to serve requests; "
                "a rolling restart needs --data-parallel-size 2 or more"
            )
        self.target = target
        self.ready_timeout_s = ready_timeout_s
        self.stopped = stopped  # the target is shutting down: stop between steps
        # False sorts first: a replica that is down now would stop a serving one's turn (it
        # waits for every other to serve), so it comes back before any is taken out.
        order = sorted(range(target.size), key=target.serving)
        self.progress = RollProgress(order, drain_timeout_s)
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self.progress.running

    def start(self) -> None:
        """Run the restart on a daemon thread."""
        self._thread = threading.Thread(target=self.run, name="heron-rolling-restart", daemon=True)
        self._thread.start()

    def join(self, timeout: float | None = None) -> None:
        if self._thread is not None:
            self._thread.join(timeout)

    def run(self) -> None:
        """Restart every replica in order; sets ``progress`` to done, or failed with the
        reason (the replica that failed is left draining no more)."""
        p = self.progress
        try:
            for index in p.order:
                p.current = index
                self._roll_one(index)
                p.done.append(index)
            p.current, p.phase = None, "done"
            logger.info("rolling restart done: replicas %s restarted", p.done)
        except Exception as exc:
            p.phase, p.error = "failed", str(exc)
            logger.error("rolling restart stopped at replica %s: %s", p.current, exc)
        finally:
            p.finished_at = time.time()

    def _roll_one(self, index: int) -> None:
        """Take replica ``index`` out (drained), restart it, and wait until it serves; sets
        ``progress.phase`` as it goes. Raises RuntimeError on a timeout or a shutdown."""
        p, target = self.progress, self.target
        others = [i for i in range(target.size) if i != index]
        in_service = target.serving(index)  # out of service already: nothing to wait for
        try:
            while True:
                p.phase = "waiting"
                if in_service and not self._wait(
                    lambda: all(target.serving(i) for i in others), self.ready_timeout_s
                ):
                    raise RuntimeError(
                        f"replicas {others} did not all serve within "
                        f"{self.ready_timeout_s:.0f} s; replica {index} was not taken out"
                    )
                p.phase = "draining"
                target.set_draining(index, True)
                drained = self._wait(lambda: target.in_flight(index) == 0, p.drain_timeout_s)
                if not in_service or all(target.serving(i) for i in others):
                    break
                # Another replica went out while this one drained (it crashed): restarting
                # this one now would leave two out, so it serves again until that one is back.
                logger.warning("rolling restart: replica %d waits for the others again", index)
                target.set_draining(index, False)
            if not drained:
                logger.warning(
                    "replica %d still runs %d requests after %.0f s of draining; restarting it",
                    index,
                    target.in_flight(index),
                    p.drain_timeout_s,
                )
            self._check_stopped()
            p.phase = "restarting"
            logger.info("rolling restart: restarting replica %d", index)
            target.restart_replica(index)
        finally:
            target.set_draining(index, False)
        if not self._wait(lambda: target.serving(index), self.ready_timeout_s):
            raise RuntimeError(
                f"replica {index} did not serve again within {self.ready_timeout_s:.0f} s"
            )

    def _wait(self, condition: Callable[[], bool], timeout: float) -> bool:
        """Poll ``condition`` until it holds (True) or ``timeout`` passes (False). Raises
        RuntimeError once the target is shutting down."""
        deadline = time.monotonic() + timeout
        while not condition():
            self._check_stopped()
            if time.monotonic() >= deadline:
                return False
            time.sleep(POLL_S)
        return True

    def _check_stopped(self) -> None:
        if self.stopped():
            raise RuntimeError("the server is shutting down")
