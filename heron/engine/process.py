"""The engine core's process, started before the HTTP process does anything slow.

Why: the core process spends most of a cold start importing torch and Heron's engine; the
HTTP process meanwhile reads the checkpoint's header and builds the tokenizer. Starting the
process first lets the two overlap on two cores. This module imports nothing heavy, and the
child imports the engine only inside ``_main``.
"""

from __future__ import annotations

import multiprocessing as mp
import sys
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
    start_spawned(process)
    child.close()
    return CoreProcess(process, conn)


def start_spawned(process: BaseProcess) -> None:
    """Start a spawned ``process`` without it running this program's main script first.

    Why: a spawned child re-runs a ``__main__`` that has a file but no module spec (the
    ``heron`` console script), so every engine would import the CLI (typer and friends, about
    0.3 s of CPU) before torch, on the critical path of a cold start. ``python -m heron.cli``
    has a spec and is already skipped. The child's target lives in an importable module, so
    it needs nothing from ``__main__``."""
    main = sys.modules["__main__"]
    path = getattr(main, "__file__", None)
    if getattr(main, "__spec__", None) is not None or path is None:
        process.start()
        return
    del main.__file__  # multiprocessing reads it while preparing the child, in start()
    try:
        process.start()
    finally:
        main.__file__ = path


def _main(conn: Connection) -> None:
    from heron.engine.core import run_engine_core

    run_engine_core(conn)
