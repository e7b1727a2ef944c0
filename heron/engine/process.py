"""The engine core's process, started before the HTTP process does anything slow.

Why: the core process spends most of a cold start importing torch and Heron's engine; the
HTTP process meanwhile reads the checkpoint's header and builds the tokenizer. Starting the
process first lets the two overlap on two cores. This module imports nothing heavy, and the
child imports the engine only inside ``_main``.
"""

from __future__ import annotations

import multiprocessing as mp
from dataclasses import dataclass
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess


@dataclass(slots=True)
class CoreProcess:
    """A started engine core process and the HTTP side of its pipe; it waits for
    ``LoadModel``."""

    process: BaseProcess
    conn: Connection

    # An ``EngineReplica`` (heron.engine.replica): the one replica of a plain server.
    def is_alive(self) -> bool:
        return self.process.is_alive()

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()

    def join(self, timeout: float | None = None) -> None:
        self.process.join(timeout)

    def describe(self) -> str:
        return f"pid {self.process.pid}"


def start_core_process() -> CoreProcess:
    """Spawn (never fork: the HTTP process has threads) an engine core process."""
    ctx = mp.get_context("spawn")
    conn, child = ctx.Pipe()
    process = ctx.Process(target=_main, args=(child,), daemon=True, name="heron-engine")
    process.start()
    child.close()
    return CoreProcess(process, conn)


def _main(conn: Connection) -> None:
    from heron.engine.core import run_engine_core

    run_engine_core(conn)
