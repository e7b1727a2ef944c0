"""A spawned engine process does not re-run the program's main script (the ``heron``
console script would import the whole CLI before torch, on every cold start)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SCRIPT = """
import multiprocessing as mp
import os
import sys

print("main ran in", os.getpid(), flush=True)

from heron.engine.process import start_spawned


if __name__ == "__main__":
    process = mp.get_context("spawn").Process(target=os.getpid)
    {start}
    process.join(60)
    sys.exit(process.exitcode)
"""


def run_script(tmp_path: Path, start: str) -> list[str]:
    script = tmp_path / "entry.py"
    script.write_text(SCRIPT.replace("{start}", start))
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, check=True
    )
    return [line for line in done.stdout.splitlines() if line.startswith("main ran")]


def test_start_spawned_does_not_rerun_the_main_script(tmp_path: Path) -> None:
    assert len(run_script(tmp_path, "start_spawned(process)")) == 1


def test_a_plain_start_would_rerun_it(tmp_path: Path) -> None:
    """The behaviour ``start_spawned`` avoids, so the test above can fail."""
    assert len(run_script(tmp_path, "process.start()")) == 2
