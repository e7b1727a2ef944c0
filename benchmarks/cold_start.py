"""Cold start: from a command to a ready server and to the first token, against llama-server.

    .venv/bin/python -m benchmarks.cold_start [--model smollm2] [--repeat 3] [-o FILE.json]

Times, each from the moment the command is started (the page cache is warm: the model file
was read before; nothing else is shared between runs):

- ``heron serve MODEL`` until ``/ready`` answers 200, and until the first streamed token of
  a chat request sent as soon as it is ready;
- ``heron run MODEL PROMPT`` with no server running: until its first byte on stdout (it
  starts a server of its own, which loads the model as it starts), and until it exits;
- ``llama-server -m FILE`` (the same GGUF blob, built by ``heron bench``'s peer manager)
  until ``/health`` answers 200 and until its first streamed token, the same way.

Heron's rows run twice: with its prepared-weights cache warm (the normal case after the
first load), and with an empty cache (``HERON_CACHE`` pointing at a fresh folder: the first
load after a pull). The model must be in the store (``heron pull smollm2``).
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import httpx

PROMPT = "Say hello in one short sentence."
TIMEOUT_S = 120.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(url: str, start: float, proc: subprocess.Popen[bytes]) -> float:
    """Seconds from ``start`` until ``url`` answers 200 (polled every 10 ms)."""
    with httpx.Client(timeout=1.0) as client:
        while time.monotonic() - start < TIMEOUT_S:
            if proc.poll() is not None:
                raise RuntimeError(f"{proc.args!r} exited with {proc.returncode}")
            try:
                if client.get(url).status_code == 200:
                    return time.monotonic() - start
            except httpx.TransportError:
                pass
            time.sleep(0.01)
    raise TimeoutError(url)


def first_token(base: str, model: str, start: float) -> float:
    """Seconds from ``start`` until the first streamed content of a chat completion."""
    body = {
        "model": model,
        "messages": [{"role": "user", "content": PROMPT}],
        "max_tokens": 8,
        "temperature": 0,
        "stream": True,
    }
    with httpx.stream("POST", f"{base}/v1/chat/completions", json=body, timeout=60) as r:
        for line in r.iter_lines():
            if line.startswith("data: ") and '"content":"' in line.replace(" ", ""):
                return time.monotonic() - start
    raise RuntimeError("no token streamed")


def stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def heron_serve(model: str, env: dict[str, str]) -> dict[str, float]:
    port = free_port()
    cmd = [sys.executable, "-m", "heron.cli", "serve", model, "--port", str(port)]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        ready = wait_for(f"{base}/ready", start, proc)
        token = first_token(base, model, start)
    finally:
        stop(proc)
    return {"ready_s": ready, "first_token_s": token}


def heron_run(model: str, env: dict[str, str]) -> dict[str, float]:
    env = dict(env, HERON_HOST=f"127.0.0.1:{free_port()}")
    cmd = [sys.executable, "-m", "heron.cli", "run", model, PROMPT]
    start = time.monotonic()
    proc = subprocess.Popen(
        cmd, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )  # stdin: `heron run` reads a piped stdin into the prompt
    assert proc.stdout is not None
    proc.stdout.read(1)
    first = time.monotonic() - start
    proc.stdout.read()
    code = proc.wait()
    if code != 0:
        raise RuntimeError(f"heron run exited with {code}")
    return {"first_token_s": first, "exit_s": time.monotonic() - start}


def llama_server(gguf: Path) -> dict[str, float]:
    from heron.bench.peers import ensure_peer

    exe = ensure_peer("llama-server")
    port = free_port()
    threads = str(os.cpu_count() or 1)
    cmd = [str(exe), "-m", str(gguf), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["-t", threads, "-tb", threads, "--no-webui", "-c", "4096"]
    start = time.monotonic()
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        base = f"http://127.0.0.1:{port}"
        ready = wait_for(f"{base}/health", start, proc)
        token = first_token(base, "model", start)
    finally:
        stop(proc)
    return {"ready_s": ready, "first_token_s": token}


def stored_gguf(model: str) -> Path:
    from heron.server.model_spec import spec_from_store
    from heron.store.store import ModelStore

    store = ModelStore(None)
    return Path(spec_from_store(store, store.get(model)).path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("-o", "--output", type=Path)
    args = parser.parse_args()
    gguf = stored_gguf(args.model)
    warm = dict(os.environ)
    with tempfile.TemporaryDirectory() as tmp:
        cases: dict[str, Callable[[], dict[str, float]]] = {
            "heron serve (weights cached)": lambda: heron_serve(args.model, warm),
            "heron run (weights cached)": lambda: heron_run(args.model, warm),
            "llama-server": lambda: llama_server(gguf),
        }

        def cold(fn: Callable[[str, dict[str, str]], dict[str, float]]) -> dict[str, float]:
            empty = tempfile.mkdtemp(dir=tmp)
            return fn(args.model, dict(warm, HERON_CACHE=empty))

        cases["heron serve (empty cache)"] = lambda: cold(heron_serve)
        cases["heron run (empty cache)"] = lambda: cold(heron_run)
        heron_serve(args.model, warm)  # fills the cache and the page cache
        results: dict[str, list[dict[str, float]]] = {name: [] for name in cases}
        for _ in range(args.repeat):
            for name, case in cases.items():
                results[name].append(case())
    print(f"model {args.model} ({gguf.stat().st_size / 1e6:.0f} MB), median of {args.repeat}")
    print("| what | ready s | first token s |")
    print("|---|---|---|")
    summary: dict[str, dict[str, float]] = {}
    for name, runs in results.items():
        med = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        summary[name] = med
        ready = f"{med['ready_s']:.2f}" if "ready_s" in med else "–"
        print(f"| {name} | {ready} | {med['first_token_s']:.2f} |")
    if args.output is not None:
        args.output.write_text(json.dumps({"runs": results, "median": summary}, indent=2))


if __name__ == "__main__":
    main()
