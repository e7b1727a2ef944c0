"""The tensor-parallel process group: rank 0 starts the workers, and every rank meets in one
torch.distributed gloo group (Heron's runner computes on CPU tensors; NCCL would come with a
CUDA runner).

Rendezvous is a ``TCPStore`` on 127.0.0.1 that rank 0 hosts: workers say they joined and,
after building their shard, that they loaded (or why they failed), so rank 0 never waits on a
worker that died. Each step rank 0 broadcasts the step's inputs once (one packed tensor,
``heron.distributed.step``); the model's row-parallel linears all-reduce their outputs.
"""

from __future__ import annotations

import datetime
import logging
import socket
import subprocess
import sys
import time
from multiprocessing import util
from pathlib import Path
from typing import Any

import msgspec
import torch
import torch.distributed as dist
from torch.distributed import TCPStore  # type: ignore[attr-defined]  # not in torch's stubs

from heron.config import EngineConfig

logger = logging.getLogger(__name__)

_HOST = "127.0.0.1"
# An idle server's workers wait in the step broadcast for as long as it stays idle.
_COLLECTIVE_TIMEOUT = datetime.timedelta(days=365)
_START_TIMEOUT_S = 600.0
# Elements of the first broadcast of a step: [op, length, payload...]; a decode step of tens of
# sequences fits, a longer payload follows in a second broadcast.
_CAPACITY = 4096
_STEP, _STOP = 1, 0


class WorkerError(RuntimeError):
    """A tensor-parallel worker failed to start or to load its shard."""


class TensorParallelGroup:
    """One rank's handle on the group. Rank 0 also owns the worker processes."""

    def __init__(
        self, rank: int, size: int, store: TCPStore, workers: list[subprocess.Popen[bytes]]
    ) -> None:
        self.rank = rank
        self.size = size
        self.store = store
        self.workers = workers
        self.closed = False
        self.broken: str | None = None  # why the group can no longer step
        self._finalizer: util.Finalize | None = None
        if rank == 0:
            self._wait_for("joined")
        # Any: torch's stubs leave out a backend's own collectives (broadcast, allreduce).
        self.pg: Any = dist.ProcessGroupGloo(store, rank, size, _COLLECTIVE_TIMEOUT)
        if rank == 0:  # on exit, also from a multiprocessing child (which skips atexit)
            self._finalizer = util.Finalize(self, _stop, args=(self.pg, workers), exitpriority=10)

    # ------------------------------------------------------------------ starting
    @classmethod
    def launch(cls, source: Path, config: EngineConfig) -> TensorParallelGroup:
        """Rank 0: start ranks 1..N-1 (``python -m heron.distributed.worker``), each loading
        its own shard of ``source``, and meet them. Raises WorkerError if one dies first."""
        size = config.tensor_parallel_size
        with socket.socket() as s:
            s.bind((_HOST, 0))
            port = s.getsockname()[1]
        store = TCPStore(
            _HOST,
            port,
            size,
            is_master=True,
            wait_for_workers=False,
            timeout=datetime.timedelta(seconds=_START_TIMEOUT_S),
        )
        payload = msgspec.msgpack.encode(config)
        workers = []
        for rank in range(1, size):
            cmd = [sys.executable, "-m", "heron.distributed.worker"]
            cmd += [str(rank), str(size), str(port), str(source)]
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE)
            assert proc.stdin is not None
            proc.stdin.write(payload)
            proc.stdin.close()
            workers.append(proc)
        logger.info("tensor parallel: started %d workers", size - 1)
        try:
            return cls(0, size, store, workers)
        except BaseException:
            _stop(None, workers)
            raise

    @classmethod
    def join(cls, rank: int, size: int, port: int) -> TensorParallelGroup:
        """A worker: meet rank 0's store and the group."""
        store = TCPStore(
            _HOST,
            port,
            size,
            is_master=False,
            timeout=datetime.timedelta(seconds=_START_TIMEOUT_S),
        )
        store.set(f"joined{rank}", "1")
        return cls(rank, size, store, [])

    @staticmethod
    def decode_config(data: bytes) -> EngineConfig:
        return msgspec.msgpack.decode(data, type=EngineConfig)

    def mark_loaded(self, error: str | None = None) -> None:
        """A worker: report its shard loaded, or why it could not load."""
        self.store.set(f"loaded{self.rank}", error or "")

    def wait_loaded(self) -> None:
        """Rank 0: wait until every worker loaded its shard. Raises WorkerError with the
        worker's message when one failed or died."""
        self._wait_for("loaded")
        for rank in range(1, self.size):
            message = self.store.get(f"loaded{rank}").decode()
            if message:
                self.close()
                raise WorkerError(f"tensor-parallel rank {rank}: {message}")

    def _wait_for(self, key: str) -> None:
        keys = [f"{key}{r}" for r in range(1, self.size)]
        deadline = time.monotonic() + _START_TIMEOUT_S
        while not self.store.check(keys):
            for rank, proc in enumerate(self.workers, 1):
                if proc.poll() is not None:
                    self.close()
                    raise WorkerError(
                        f"tensor-parallel rank {rank} exited with status {proc.returncode}"
                    )
            if time.monotonic() > deadline:
                self.close()
                raise WorkerError(f"tensor-parallel workers did not report {key!r} in time")
            time.sleep(0.02)

    # --------------------------------------------------------------- each step
    def all_reduce(self, tensor: torch.Tensor) -> None:
        """Sum ``tensor`` over the ranks, in place (the same bytes on every rank). Raises
        WorkerError when a rank is gone."""
        try:
            self.pg.allreduce([tensor]).wait()
        except RuntimeError as exc:
            self._break(exc)

    def _break(self, exc: Exception) -> None:
        """A collective failed: the ranks are out of step for good (a worker died, or a
        forward failed on one rank). Every later step raises the same error."""
        dead = [r for r, w in enumerate(self.workers, 1) if w.poll() is not None]
        who = f"rank {dead[0]} exited" if dead else str(exc)
        self.broken = f"tensor-parallel group failed ({who}); restart the engine"
        raise WorkerError(self.broken) from exc

    def send_step(self, packed: torch.Tensor) -> None:
        """Rank 0: broadcast one step's packed inputs (int64, ``heron.distributed.step``).
        Raises WorkerError once the group has failed."""
        if self.broken is not None:
            raise WorkerError(self.broken)
        try:
            self._send(packed)
        except RuntimeError as exc:
            self._break(exc)

    def _send(self, packed: torch.Tensor) -> None:
        n = packed.numel()
        first = min(n, _CAPACITY - 2)
        buf = torch.empty(_CAPACITY, dtype=torch.int64)
        buf[0], buf[1] = _STEP, n
        buf[2 : 2 + first] = packed[:first]
        self.pg.broadcast([buf]).wait()
        if n > first:
            rest = packed[first:].contiguous()
            self.pg.broadcast([rest]).wait()

    def recv_step(self) -> torch.Tensor | None:
        """A worker: the next step's packed inputs, or None when rank 0 stops the group."""
        buf = torch.empty(_CAPACITY, dtype=torch.int64)
        self.pg.broadcast([buf]).wait()
        op, n = buf[:2].tolist()
        if op == _STOP:
            return None
        first = min(n, _CAPACITY - 2)
        if n == first:
            return buf[2 : 2 + n]
        rest = torch.empty(n - first, dtype=torch.int64)
        self.pg.broadcast([rest]).wait()
        return torch.cat([buf[2 : 2 + first], rest])

    def close(self) -> None:
        """Rank 0: stop the workers (they leave their step loop and exit). Idempotent."""
        if self.rank != 0 or self.closed:
            return
        self.closed = True
        if self._finalizer is not None:
            self._finalizer()  # runs _stop once and unregisters it
        else:
            _stop(None, self.workers)


def _stop(pg: Any, workers: list[subprocess.Popen[bytes]]) -> None:
    """Tell the workers to stop (when the group is up), then make sure they did."""
    healthy = all(w.poll() is None for w in workers)
    if pg is not None and healthy:
        buf = torch.zeros(_CAPACITY, dtype=torch.int64)  # op _STOP
        try:
            pg.broadcast([buf]).wait()
        except RuntimeError:
            healthy = False  # a worker is gone: kill the rest
    for w in workers:
        try:
            w.wait(timeout=10 if healthy else 0)
        except subprocess.TimeoutExpired:
            w.kill()
            w.wait()
