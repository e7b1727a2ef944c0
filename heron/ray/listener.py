"""The HTTP process's end of the Ray replicas' connections: an authenticated TCP listener.

Engine actors dial back with ``multiprocessing.connection.Client(address, authkey)``. Each
connection must pass multiprocessing's HMAC challenge, both ways, with the listener's random
``authkey`` (so nothing without the key can drive an engine or read its outputs), then name
its replica in a ``ReplicaHello``. Only then is it queued for ``take``.

Why not ``Listener(authkey=...)`` alone: its ``accept`` runs the challenge inline with no
deadline, so one silent connection (a port scan) would block every later replica. Here the
listener accepts without a key and each connection is challenged on its own thread, under a
socket timeout, at most ``MAX_HANDSHAKES`` at a time.
"""

from __future__ import annotations

import contextlib
import logging
import os
import secrets
import socket
import struct
import threading
from collections import deque
from dataclasses import dataclass
from multiprocessing import AuthenticationError
from multiprocessing.connection import (
    Connection,
    Listener,
    answer_challenge,
    deliver_challenge,
)

import msgspec

logger = logging.getLogger(__name__)

HANDSHAKE_TIMEOUT_S = 10  # challenge, answer and hello, per connection
MAX_HANDSHAKES = 16  # connections being challenged at once; more are closed unread
MAX_HELLO_BYTES = 1024
# A node that vanishes (power, network) sends no FIN: probe an idle connection after 10 s,
# every 5 s, and drop it after 3 unanswered probes (~25 s), so its replica is restarted.
KEEPALIVE_IDLE_S, KEEPALIVE_INTERVAL_S, KEEPALIVE_COUNT = 10, 5, 3
# Keepalive waits while data we sent is unacknowledged (requests kept coming): then drop the
# connection when nothing was acknowledged for this long, not after TCP's ~15 min of retries.
USER_TIMEOUT_MS = 60_000


class ReplicaHello(msgspec.Struct, frozen=True):
    """The first message of an authenticated actor: which replica it is, and where."""

    replica_index: int
    node: str  # the node's IP address, for logs
    pid: int


@dataclass(slots=True)
class Arrival:
    """An authenticated connection from the engine actor of one replica."""

    conn: Connection
    hello: ReplicaHello


class ReplicaListener:
    """Accepts the engine actors' connections and hands them out by replica index.

    ``address`` is what actors dial (bound on ``host``; port 0 picks a free one); ``authkey``
    is 32 random bytes unless given. Thread-safe.
    """

    def __init__(self, host: str, port: int, size: int, authkey: bytes | None = None) -> None:
        self.size = size
        self.authkey = authkey or secrets.token_bytes(32)
        self._listener = Listener((host, port), family="AF_INET", backlog=64)
        bound = self._listener.address
        self.address: tuple[str, int] = (str(bound[0]), int(bound[1]))
        self._cond = threading.Condition()
        self._arrivals: dict[int, deque[Arrival]] = {i: deque() for i in range(size)}
        self._failed: dict[int, str] = {}  # replicas whose actor is gone for good
        self._closed = False
        self._handshakes = threading.BoundedSemaphore(MAX_HANDSHAKES)
        self._thread = threading.Thread(target=self._accept_loop, name="heron-ray-listener")
        self._thread.daemon = True
        self._thread.start()

    # ------------------------------------------------------------------ handing out
    def take(self, index: int, cancel: threading.Event) -> Arrival:
        """Wait for (and remove) the next live connection of replica ``index``. Raises
        EOFError when ``cancel`` is set, the listener closes, or the replica failed."""
        with self._cond:
            while True:
                queue = self._arrivals[index]
                while queue:
                    arrival = queue.popleft()
                    if not connection_closed(arrival.conn):
                        return arrival
                    arrival.conn.close()  # dialled in, then went away before it was needed
                if cancel.is_set():
                    raise EOFError(f"engine replica {index} was stopped")
                if self._closed:
                    raise EOFError("the replica listener is closed")
                if index in self._failed:
                    raise EOFError(self._failed[index])
                self._cond.wait(0.5)

    def fail(self, index: int, message: str) -> None:
        """Replica ``index`` will not dial in again: its waiters raise EOFError(message)."""
        with self._cond:
            self._failed[index] = message
            self._cond.notify_all()

    def wake(self) -> None:
        """Let waiters re-check their ``cancel`` event now."""
        with self._cond:
            self._cond.notify_all()

    def close(self) -> None:
        """Stop accepting; close the connections nobody took. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            for queue in self._arrivals.values():
                for arrival in queue:
                    arrival.conn.close()
                queue.clear()
            self._cond.notify_all()
        host, port = self.address
        # accept() does not return when its socket closes under it: dial it once instead.
        with contextlib.suppress(OSError):
            wake_host = "127.0.0.1" if host in ("0.0.0.0", "") else host
            socket.create_connection((wake_host, port), timeout=1).close()
        self._thread.join(5)
        self._listener.close()

    # ------------------------------------------------------------------ accepting
    def _accept_loop(self) -> None:
        while True:
            try:
                conn = self._listener.accept()
            except OSError as exc:
                if self._closed:
                    return
                logger.warning("replica listener: accept failed: %s", exc)
                continue
            if self._closed:
                conn.close()
                return
            if not self._handshakes.acquire(blocking=False):
                conn.close()  # too many at once: a flood, not our actors
                continue
            peer = self._listener.last_accepted
            thread = threading.Thread(
                target=self._handshake, args=(conn, peer), name="heron-ray-handshake"
            )
            thread.daemon = True
            thread.start()

    def _handshake(self, conn: Connection, peer: object) -> None:
        try:
            _set_timeouts(conn, HANDSHAKE_TIMEOUT_S)
            deliver_challenge(conn, self.authkey)
            answer_challenge(conn, self.authkey)
            hello = msgspec.msgpack.decode(conn.recv_bytes(MAX_HELLO_BYTES), type=ReplicaHello)
            if not 0 <= hello.replica_index < self.size:
                raise ValueError(f"replica index {hello.replica_index} is not in 0..{self.size}")
            _set_timeouts(conn, 0)  # from here on, engine steps may take as long as they take
            _keep_alive(conn)
        except (AuthenticationError, OSError, EOFError, msgspec.DecodeError, ValueError) as exc:
            logger.warning("replica listener: refused a connection from %s: %r", peer, exc)
            conn.close()
            return
        finally:
            self._handshakes.release()
        logger.info(
            "engine replica %d connected from %s (pid %d)",
            hello.replica_index,
            hello.node,
            hello.pid,
        )
        with self._cond:
            if self._closed:
                conn.close()
                return
            self._arrivals[hello.replica_index].append(Arrival(conn, hello))
            self._cond.notify_all()


def connection_closed(conn: Connection) -> bool:
    """Whether the peer has closed ``conn`` (or it broke), without consuming any data."""
    try:
        fd = os.dup(conn.fileno())
    except OSError:
        return True  # closed on our side
    with socket.socket(fileno=fd) as sock:
        try:
            return sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
        except BlockingIOError:
            return False  # open, nothing to read
        except OSError:
            return True


def shutdown_connection(conn: Connection) -> None:
    """Shut both directions of ``conn`` down: the peer reads EOF, and a thread blocked
    reading it here wakes (closing the descriptor alone wakes neither). Never raises."""
    with contextlib.suppress(OSError):
        with socket.socket(fileno=os.dup(conn.fileno())) as sock:
            sock.shutdown(socket.SHUT_RDWR)


def _set_timeouts(conn: Connection, seconds: int) -> None:
    """SO_RCVTIMEO / SO_SNDTIMEO on the connection's socket (0: none). A blocking read past
    it fails with OSError, which is how a stalled handshake ends."""
    timeval = struct.pack("ll", seconds, 0)
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, timeval)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, timeval)


def _keep_alive(conn: Connection) -> None:
    with socket.socket(fileno=os.dup(conn.fileno())) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, KEEPALIVE_IDLE_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, KEEPALIVE_INTERVAL_S)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, KEEPALIVE_COUNT)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, USER_TIMEOUT_MS)
