"""The engine actor: what runs in a Ray worker process, one per placement-group bundle.

``serve`` dials the HTTP process's listener, names its replica, and runs
``heron.engine.core.run_engine_core`` on the connection, the loop a local engine process
runs on its pipe; when that engine ends (the front end shut it down or moved to another
model) it dials in again, so an idle actor always has a connection waiting. It returns only
when the listener is gone (the server stopped). If the process dies, Ray restarts the actor
and retries ``serve`` (``max_restarts`` / ``max_task_retries``), and it dials in anew.

Ray reserves the bundle's CPUs for the actor and sets OMP_NUM_THREADS to their number, which
sizes torch's thread pool. The engine is imported in ``serve`` only: ``check_model`` answers
before torch loads.
"""

from __future__ import annotations

import gc
import logging
import os
import time
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection

import msgspec

from heron.ray.listener import ReplicaHello

logger = logging.getLogger(__name__)

MAX_MODEL_FILES = 10_000
CONNECT_RETRY_S = 30.0  # a listener that refuses this long is gone


def model_files(path: str) -> dict[str, int]:
    """Size of every file of a model: ``{"": size}`` for a single file (a GGUF), else each
    regular file under the directory by its relative path (symlinks followed, as a
    Hugging Face snapshot's are). Raises OSError when ``path`` cannot be read."""
    if not os.path.isdir(path):
        return {"": os.stat(path).st_size}
    files: dict[str, int] = {}
    for root, _dirs, names in os.walk(path):
        for name in names:
            full = os.path.join(root, name)
            files[os.path.relpath(full, path)] = os.stat(full).st_size
            if len(files) > MAX_MODEL_FILES:
                raise OSError(f"{path} holds more than {MAX_MODEL_FILES} files")
    return files


def model_mismatch(path: str, expected: dict[str, int]) -> str | None:
    """Why the model at ``path`` here differs from ``expected`` (``model_files`` on the
    server), or None when every expected file is here with its size."""
    try:
        here = model_files(path)
    except OSError as exc:
        return f"cannot read {path}: {exc.strerror or exc}"
    for name, size in sorted(expected.items()):
        shown = os.path.join(path, name) if name else path
        if name not in here:
            return f"{shown} is missing"
        if here[name] != size:
            return f"{shown} has {here[name]} bytes here but {size} on the server"
    return None


class EngineActor:
    """Replica ``index``'s engine core; dials ``address`` with ``authkey``."""

    def __init__(self, index: int, address: tuple[str, int], authkey: bytes) -> None:
        self.index = index
        self.address = address
        self.authkey = authkey

    def node(self) -> str:
        """This node's IP address in the Ray cluster."""
        import ray

        return str(ray.util.get_node_ip_address())  # type: ignore[no-untyped-call]

    def check_model(self, path: str, expected: dict[str, int]) -> str | None:
        """Why this node cannot load the model at ``path``, or None when it can."""
        problem = model_mismatch(path, expected)
        return None if problem is None else f"node {self.node()}: {problem}"

    def serve(self) -> None:
        """Run engine cores for the front end, one after another, until it is gone."""
        from heron.engine.core import run_engine_core

        hello = msgspec.msgpack.encode(ReplicaHello(self.index, self.node(), os.getpid()))
        while True:
            conn = self._dial()
            if conn is None:
                return
            with conn:
                try:
                    conn.send_bytes(hello)
                except OSError:
                    continue
                run_engine_core(conn)
            # run_engine_core froze its objects out of the collector's sweeps: let the
            # finished engine's cycles (the model, its KV cache) be collected.
            gc.unfreeze()
            gc.collect()

    def _dial(self) -> Connection | None:
        """A connection to the listener; None once it has refused for ``CONNECT_RETRY_S``."""
        deadline = time.monotonic() + CONNECT_RETRY_S
        while True:
            try:
                return Client(self.address, family="AF_INET", authkey=self.authkey)
            except (OSError, EOFError, AuthenticationError) as exc:
                if time.monotonic() >= deadline:
                    logger.warning(
                        "replica %d: no server at %s (%s)", self.index, self.address, exc
                    )
                    return None
                time.sleep(1.0)
