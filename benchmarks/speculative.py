"""Speculative decoding against no speculation and against llama-server, one run.

    .venv/bin/python -m benchmarks.speculative [--repeat 2] [-o docs/bench/speculative]

Starts five servers on SmolLM2-135M (the store's ``smollm2``, its GGUF for llama-server):
Heron without speculation, with ``--speculative ngram`` and with ``--speculative suffix``;
llama-server as it starts by default and with its n-gram speculation
(``--spec-type ngram-simple``). Then ``heron bench`` alternates them over:

- ``copy``: one user, sequential requests that copy-edit a 300-token Python file (the
  workload speculation is for);
- ``chat``: one user, open-ended questions (little to copy; the adaptive rule must back off);
- ``users16``: 16 users at once, Heron only (speculation must not cost throughput).

Greedy decoding, end of sequence honoured (a copy ends where the model stops). The
acceptance rates come from each Heron server's ``/metrics`` (``heron:spec_decode_*``).
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

CODE = """import json
import os
from dataclasses import dataclass


@dataclass
class Item:
    name: str
    price: float
    quantity: int

    def total(self) -> float:
        return self.price * self.quantity


def load_items(path: str) -> list[Item]:
    if not os.path.exists(path):
        return []
    with open(path) as f:
        data = json.load(f)
    items = []
    for row in data:
        items.append(Item(row["name"], float(row["price"]), int(row["quantity"])))
    return items


def save_items(path: str, items: list[Item]) -> None:
    rows = [{"name": i.name, "price": i.price, "quantity": i.quantity} for i in items]
    with open(path, "w") as f:
        json.dump(rows, f, indent=2)


def cart_total(items: list[Item]) -> float:
    total = 0.0
    for item in items:
        total += item.total()
    return total


def cheapest(items: list[Item]) -> Item | None:
    if not items:
        return None
    return min(items, key=lambda i: i.price)
"""

COPY_PROMPT = (
    "Here is a Python file:\n\n```python\n" + CODE + "```\n\n"
    "Rewrite the whole file with the class Item renamed to Product. Output only the code."
)
CHAT_PROMPT = "Explain the difference between TCP and UDP in 3 sentences."


def start(cmd: list[str], url: str) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(url, timeout=1).status_code == 200:
                return proc
        if proc.poll() is not None:
            raise RuntimeError(f"{cmd[:3]} exited with {proc.returncode}")
        time.sleep(0.2)
    proc.kill()
    raise TimeoutError(cmd)


@contextlib.contextmanager
def servers(gguf: Path) -> Iterator[dict[str, str]]:
    from heron.bench.peers import ensure_peer

    llama = str(ensure_peer("llama-server"))
    urls: dict[str, str] = {}
    procs: list[subprocess.Popen[bytes]] = []
    heron = [sys.executable, "-m", "heron.cli", "serve", "smollm2"]
    plans = {
        "heron": (heron, 18601),
        "heron-ngram": ([*heron, "--speculative", "ngram"], 18602),
        "heron-suffix": ([*heron, "--speculative", "suffix"], 18603),
        "llama-server": ([llama, "-m", str(gguf), "-np", "16", "-c", "32768"], 18604),
        "llama-server-ngram": (
            [llama, "-m", str(gguf), "-np", "16", "-c", "32768", "--spec-type", "ngram-simple"],
            18605,
        ),
    }
    try:
        for name, (cmd, port) in plans.items():
            is_heron = name.startswith("heron")
            port_args = ["--port", str(port)] + ([] if is_heron else ["--host", "127.0.0.1"])
            ready = f"http://127.0.0.1:{port}/" + ("ready" if is_heron else "health")
            procs.append(start([*cmd, *port_args], ready))
            urls[name] = f"http://127.0.0.1:{port}"
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)


def bench(urls: dict[str, str], names: list[str], out: Path, extra: list[str]) -> None:
    endpoints = [arg for n in names for arg in ("-e", f"{n}={urls[n]}")]
    cmd = [sys.executable, "-m", "heron.cli", "bench", *endpoints, "--model", "smollm2"]
    cmd += ["--no-ignore-eos", "--no-progress", "--no-plots", "--compare", "-o", str(out)]
    subprocess.run([*cmd, *extra], check=True)


def spec_metrics(url: str) -> str:
    text = httpx.get(f"{url}/metrics", timeout=5).text
    return "\n".join(line for line in text.splitlines() if line.startswith("heron:spec_decode"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/bench/speculative"))
    args = parser.parse_args()
    from benchmarks.cold_start import stored_gguf

    out = args.output
    everyone = ["heron", "heron-ngram", "heron-suffix", "llama-server", "llama-server-ngram"]
    one = ["-w", "sequential", "--requests", "4", "--repeat", str(args.repeat)]
    with servers(stored_gguf("smollm2")) as urls:
        bench(urls, everyone, out / "copy", [*one, "--prompt", COPY_PROMPT, "--max-tokens", "400"])
        for name in ("heron-ngram", "heron-suffix"):
            (out / f"copy-{name}.metrics").write_text(spec_metrics(urls[name]))
        bench(urls, everyone, out / "chat", [*one, "--prompt", CHAT_PROMPT, "--max-tokens", "200"])
        many = ["-w", "concurrent", "--users", "16", "--requests-per-user", "2"]
        bench(
            urls,
            ["heron", "heron-ngram", "heron-suffix"],
            out / "users16",
            [*many, "--repeat", str(args.repeat), "--prompt", CHAT_PROMPT, "--max-tokens", "200"],
        )
        for name in ("heron-ngram", "heron-suffix"):
            (out / f"all-{name}.metrics").write_text(spec_metrics(urls[name]))


if __name__ == "__main__":
    main()
