"""One user's decode speed on a quiet machine and beside a process that keeps one core busy,
Heron against llama-server.

    .venv/bin/python -m benchmarks.busy_neighbour [--repeat 2] [-o docs/bench/busy]

Runs ``heron bench --heron --peer llama-server -w concurrent --users 1`` twice: once on the
quiet machine, once while ``python -c "while True: pass"`` spins (one busy core of the two).
Both servers face the same neighbour in the same run. The figure of merit is each server's
busy tok/s as a fraction of its own quiet tok/s (the bar: Heron keeps at least 40%).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

BENCH = [
    "-m", "heron.cli", "bench", "--heron", "--peer", "llama-server", "-w", "concurrent",
    "--users", "1", "--requests-per-user", "3", "--max-tokens", "128",
    "--no-progress", "--no-plots",
]  # fmt: skip


def bench(out: Path, repeat: int) -> dict[str, float]:
    """agg tok/s per endpoint of one ``heron bench`` run writing to ``out``."""
    cmd = [sys.executable, *BENCH, "--repeat", str(repeat), "-o", str(out)]
    subprocess.run(cmd, check=True)
    data = json.loads((out / "results.json").read_text())
    rates: dict[str, list[float]] = {}
    for row in data["summaries"]:
        rates.setdefault(row["endpoint"], []).append(row["agg_tok_s"])
    return {name: sum(v) / len(v) for name, v in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/bench/busy"))
    args = parser.parse_args()
    quiet = bench(args.output / "quiet", args.repeat)
    spinner = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        busy = bench(args.output / "busy", args.repeat)
    finally:
        spinner.kill()
        spinner.wait()
    print("| server | quiet tok/s | beside a busy core tok/s | kept |")
    print("|---|---|---|---|")
    for name in quiet:
        kept = busy[name] / quiet[name]
        print(f"| {name} | {quiet[name]:.1f} | {busy[name]:.1f} | {kept:.0%} |")


if __name__ == "__main__":
    main()
