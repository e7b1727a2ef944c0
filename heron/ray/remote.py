"""One engine replica placed on a Ray cluster, as the data-parallel client sees it: an
``EngineReplica`` (heron.engine.replica) whose channel is the TCP connection its actor dials.

The factory returns it at once, as a local replica's factory does; its channel waits for
the actor's connection the first time the client's writer or reader touches it (the writer
sends ``LoadModel`` through it). Its liveness is the connection's: the actor's process dying
closes it (a vanished node is found by TCP keepalive). Ray, not this class, restarts the
actor; the restarted actor dials in again and the next replica for the same slot takes it.
A rolling restart has Ray do the same on purpose (``restart_in_place``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from heron.ray.listener import Arrival, ReplicaListener, connection_closed, shutdown_connection

logger = logging.getLogger(__name__)


class RemoteReplica:
    """The engine core of replica ``index``, in the Ray actor that dials ``listener``.
    ``restart``: has Ray kill the actor and restart it (``RayReplicas.restart_actor``)."""

    def __init__(
        self, listener: ReplicaListener, index: int, restart: Callable[[], None] | None = None
    ) -> None:
        self._listener = listener
        self.index = index
        self._restart = restart
        self._arrival: Arrival | None = None
        self._resolving = threading.Lock()
        self._stopped = threading.Event()

    @property
    def conn(self) -> RemoteReplica:
        """The channel: this object (``send_bytes``, ``recv_bytes``, ``poll``, ``close``)."""
        return self

    # ---------------------------------------------------------------- the channel
    def send_bytes(self, buf: bytes) -> None:
        self._connection().conn.send_bytes(buf)

    def recv_bytes(self) -> bytes:
        return self._connection().conn.recv_bytes()

    def poll(self, timeout: float | None = 0.0) -> bool:
        return self._connection().conn.poll(timeout)

    def close(self) -> None:
        """Stop and release the connection (waiting for one ends with EOFError)."""
        self.kill()
        arrival = self._arrival
        if arrival is not None:
            arrival.conn.close()

    def _connection(self) -> Arrival:
        """The actor's connection, waiting for it on first use. Raises EOFError once the
        replica was stopped (``kill``) or its actor is gone for good."""
        with self._resolving:
            if self._arrival is None:
                arrival = self._listener.take(self.index, self._stopped)
                self._arrival = arrival
                if self._stopped.is_set():  # stopped while the connection arrived
                    shutdown_connection(arrival.conn)
            return self._arrival

    # ------------------------------------------------------------ the replica
    def is_alive(self) -> bool:
        """True while waiting for the actor's connection and while that connection is open."""
        if self._stopped.is_set():
            return False
        arrival = self._arrival
        return arrival is None or not connection_closed(arrival.conn)

    def kill(self) -> None:
        """Shut the connection down: the engine reads EOF and leaves its loop, and the actor
        dials in again for the next replica of this slot. A dead actor is Ray's to restart.
        Idempotent; never raises."""
        self._stopped.set()
        self._listener.wake()
        arrival = self._arrival
        if arrival is not None:
            shutdown_connection(arrival.conn)

    def restart_in_place(self) -> None:
        """A ``SupervisedReplica``: Ray kills the actor's process and restarts it; the
        connection closes when the old process is gone. The new actor dials in for the next
        replica of this slot. Without ``restart``, only the engine restarts (``kill``)."""
        if self._restart is None:
            self.kill()
            return
        try:
            self._restart()
        except Exception as exc:  # Ray refused (the actor is gone for good): a crash follows
            logger.error("replica %d: Ray did not restart its actor: %s", self.index, exc)
            self.kill()

    def join(self, timeout: float | None = None) -> None:
        """Wait until the connection has closed (or ``timeout`` seconds)."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.is_alive():
            if deadline is not None and time.monotonic() >= deadline:
                return
            time.sleep(0.05)

    def describe(self) -> str:
        arrival = self._arrival
        where = "not connected yet"
        if arrival is not None:
            where = f"node {arrival.hello.node}, pid {arrival.hello.pid}"
        return f"Ray replica {self.index}, {where}"
