"""Two data-parallel replicas: prefix-aware routing against round-robin on an interleaved
multi-turn workload, and one replica killed during a 16-user run.

    .venv/bin/python -m benchmarks.data_parallel [-o docs/bench/data-parallel]

Part 1 runs ``heron bench --heron -w multi-turn`` twice against ``heron serve MODEL
--data-parallel-size 2``, once per ``--router`` (prefix, round-robin): ``--users`` users
share ``--conversations`` conversations of 3 turns, so conversations interleave, and each
opening is padded to ``--prompt-tokens`` so that a turn's history is worth caching. It
reports the prefix-cache hit rate (hits / prompt tokens looked up, summed over replicas,
from /metrics) and the p50 time to first token of turns 1, 2 and 3.

Part 2 serves the model with two replicas, runs 16 users streaming back-to-back requests,
``kill -9``s one replica part way, and reports: requests that succeeded, failed with an
error, or hung (no end within ``--timeout``), and how long the replica took to serve again
(/ready says "2 of 2 replicas").
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx

from heron.bench.replica_metrics import replica_delta, scrape_replica_counters


@contextlib.contextmanager
def serving(model: str, router: str) -> Iterator[tuple[str, int]]:
    """``heron serve MODEL --data-parallel-size 2 --router ROUTER`` until both replicas are
    ready; yields (base URL, server pid) and stops it after."""
    port = 18000 + os.getpid() % 1000
    log = tempfile.NamedTemporaryFile(prefix="heron-dp-", suffix=".log", delete=False)
    cmd = [sys.executable, "-m", "heron.cli", "serve", model, "--port", str(port),
           "--data-parallel-size", "2", "--router", router]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/ready", timeout=2).text == "ready (2 of 2 replicas)":
                    break
            assert proc.poll() is None, f"heron serve exited; see {log.name}"
            time.sleep(0.5)
        yield base, proc.pid
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)


def bench_router(model: str, router: str, args: argparse.Namespace) -> dict[str, object]:
    """One ``heron bench`` multi-turn run against a DP=2 server with ``router``."""
    out = args.output / router
    with serving(model, router) as (base, _):
        cmd = [
            sys.executable, "-m", "heron.cli", "bench", "-e", f"{router}={base}/v1",
            "--model", model, "-w", "multi-turn", "--users", str(args.users),
            "--conversations", str(args.conversations), "--turns", "3",
            "--prompt-tokens", str(args.prompt_tokens), "--max-tokens", str(args.max_tokens),
            "--warmup", "1", "--no-progress", "--no-plots", "-o", str(out),
        ]  # fmt: skip
        before = scrape_replica_counters(base)
        subprocess.run(cmd, check=True)
        grown = replica_delta(before, scrape_replica_counters(base)) or {}
    row = json.loads((out / "results.json").read_text())["summaries"][0]
    hits, queries = sum(h for h, _, _ in grown.values()), sum(q for _, q, _ in grown.values())
    return {
        "router": router,
        "ttft_p50_by_turn": {t: s["p50"] for t, s in row["ttft_by_turn_s"].items()},
        "hit_rate": hits / queries if queries else 0.0,
        "hit_by_replica": row.get("replica_prefix_hit_rates"),
        "routed_by_replica": {r: n for r, (_, _, n) in grown.items()},
        "ok": f"{row['num_ok']}/{row['num_requests']}",
    }


def replica_pids(server_pid: int) -> list[int]:
    """The server's engine replicas: its children started by multiprocessing's spawn."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat.rsplit(")", 1)[1].split()[1]) == server_pid and b"spawn_main" in cmdline:
            pids.append(int(entry.name))
    return sorted(pids)


async def user(
    client: httpx.AsyncClient, url: str, model: str, u: int, n: int, max_tokens: int
) -> list[str]:
    """``n`` streamed chat requests, one after another: "ok", "error: ..." or "hang" each."""
    outcomes = []
    for i in range(n):
        body = {
            "model": model,
            "messages": [{"role": "user", "content": f"User {u}, request {i}: tell me a story."}],
            "max_tokens": max_tokens,
            "ignore_eos": True,
            "stream": True,
        }
        last = ""
        try:
            async with client.stream("POST", url, json=body) as r:
                async for line in r.aiter_lines():
                    if line.startswith("data: ") and line != "data: [DONE]":
                        last = line[6:]
            err = json.loads(last).get("error") if last else {"message": "no events"}
            outcomes.append("ok" if err is None else f"error: {err['message']}")
        except httpx.TimeoutException:
            outcomes.append("hang")
        except httpx.HTTPError as exc:
            outcomes.append(f"error: {exc!r}")
    return outcomes


async def kill_run(
    base: str, model: str, server_pid: int, args: argparse.Namespace
) -> dict[str, object]:
    url = f"{base}/v1/chat/completions"
    timeout = httpx.Timeout(args.timeout, connect=10)
    async with httpx.AsyncClient(timeout=timeout, limits=httpx.Limits(max_connections=64)) as c:
        tasks = [
            asyncio.ensure_future(user(c, url, model, u, args.requests_per_user, args.max_tokens))
            for u in range(16)
        ]
        await asyncio.sleep(args.kill_after)
        victim = replica_pids(server_pid)[-1]
        os.kill(victim, signal.SIGKILL)
        killed_at = time.monotonic()
        down_s = back_s = None  # when /ready first showed it gone, and back
        while back_s is None and time.monotonic() - killed_at < 300:
            text = (await c.get(f"{base}/ready")).text
            if down_s is None and text != "ready (2 of 2 replicas)":
                down_s = time.monotonic() - killed_at
            elif down_s is not None and text == "ready (2 of 2 replicas)":
                back_s = time.monotonic() - killed_at
            await asyncio.sleep(0.05)
        outcomes = [o for t in await asyncio.gather(*tasks) for o in t]
    errors = sorted({o for o in outcomes if o.startswith("error")})
    return {
        "requests": len(outcomes),
        "ok": outcomes.count("ok"),
        "errors": len([o for o in outcomes if o.startswith("error")]),
        "hangs": outcomes.count("hang"),
        "error_messages": errors[:3],
        "replica_down_seen_after_s": down_s,
        "replica_back_after_s": back_s,
    }


def part2(model: str, args: argparse.Namespace) -> dict[str, object]:
    with serving(model, "prefix") as (base, pid):
        before = scrape_replica_counters(base)
        result = asyncio.run(kill_run(base, model, pid, args))
        result["after"] = httpx.post(
            f"{base}/v1/chat/completions",
            json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
            timeout=60,
        ).status_code
        grown = replica_delta(before, scrape_replica_counters(base)) or {}
        result["routed_by_replica"] = {r: n for r, (_, _, n) in grown.items()}
        return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/bench/data-parallel"))
    parser.add_argument("--users", type=int, default=4)
    parser.add_argument("--conversations", type=int, default=16)
    parser.add_argument("--prompt-tokens", type=int, default=400)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--requests-per-user", type=int, default=4)
    parser.add_argument("--kill-after", type=float, default=10.0)
    parser.add_argument("--timeout", type=float, default=300.0)
    parser.add_argument("--skip-routers", action="store_true")
    args = parser.parse_args()
    args.output.mkdir(parents=True, exist_ok=True)
    report: dict[str, object] = {}
    if not args.skip_routers:
        report["routers"] = [bench_router(args.model, r, args) for r in ("prefix", "round-robin")]
        print("| router | prefix hit % | by replica | turn-1 TTFT p50 | turn-2 | turn-3 | ok |")
        print("|---|---|---|---|---|---|---|")
        for row in report["routers"]:  # type: ignore[attr-defined]
            t = row["ttft_p50_by_turn"]
            hits = " ".join(f"{r}:{100 * v:.0f}" for r, v in (row["hit_by_replica"] or {}).items())
            ms = [f"{1000 * t[k]:.0f} ms" if k in t else "-" for k in ("1", "2", "3")]
            rate = 100 * row["hit_rate"]
            print(f"| {row['router']} | {rate:.0f} | {hits} | {' | '.join(ms)} | {row['ok']} |")
    report["kill"] = part2(args.model, args)
    print(json.dumps(report["kill"], indent=2))
    (args.output / "summary.json").write_text(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
