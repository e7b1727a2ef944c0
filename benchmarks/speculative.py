"""Speculative decoding against no speculation and against llama-server, one run.

    .venv/bin/python -m benchmarks.speculative [--repeat 2] [-o docs/bench/speculative]

Starts the servers on SmolLM2-135M (the store's ``smollm2``, its GGUF for llama-server):
Heron without speculation, with ``--speculative ngram`` and with ``--speculative suffix``;
llama-server as it starts by default and with each of its prompt-lookup speculation types
(``LLAMA_SPECS``; the best of them is reported as its best setting). Then, per repeat (on
freshly started servers, warmed on a prompt no workload sends), every server in turn (the
order rotates between repeats) runs each workload of ``benchmarks.spec_prompts``, where
every request carries distinct content:

- ``edit``: one user, 4 sequential requests, each rewriting a different ~300-token code file
  with one rename (the workload speculation is for);
- ``quote``: one user, 4 different documents summarized with exact quotes;
- ``turns``: one user, 4 different scripted conversations whose last turn asks for the
  assistant's earlier answer again, changed a little;
- ``chat``: one user, 4 different open questions (little to copy; the adaptive rule must
  back off);
- ``users16``: 16 users at once, 16 different open questions, Heron only (speculation must
  not cost throughput). ``heron-again``, a second Heron server without speculation, measures
  the noise floor: at 16 users nobody drafts, so every Heron server runs the same steps.

Greedy decoding, end of sequence honoured. tok/s is decode speed: the tokens after the first
over the time after the first (prefill is the same with and without speculation), summed
over a workload's requests; for ``users16`` it is every token over the wall time. The
acceptance rates come from each Heron server's ``/metrics`` (``heron:spec_decode_*``),
counted per workload. Writes ``summary.json``, ``summary.md`` and the raw records.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from benchmarks import spec_prompts
from heron.bench.client import RequestRecord, stream_chat
from heron.bench.spec_metrics import delta, scrape_spec_counters
from heron.bench.workload import Endpoint, RequestSettings

HERON_SPECS: dict[str, list[str]] = {
    "heron": [],
    "heron-ngram": ["--speculative", "ngram"],
    "heron-suffix": ["--speculative", "suffix"],
    # A second server without speculation: its ratio to ``heron`` is the run-to-run noise
    # floor (an A/A control) against which the speculative servers' ratios are read.
    "heron-again": [],
}
# llama-server's speculation without a draft model (SmolLM2-135M has no smaller sibling).
LLAMA_SPECS: dict[str, list[str]] = {
    "llama-server": [],
    "llama-ngram-simple": ["--spec-type", "ngram-simple"],
    "llama-ngram-simple-n4": [
        "--spec-type",
        "ngram-simple",
        "--spec-ngram-simple-size-n",
        "4",
        "--spec-ngram-simple-size-m",
        "16",
    ],
    "llama-ngram-mod": ["--spec-type", "ngram-mod"],
    "llama-ngram-map-k": ["--spec-type", "ngram-map-k"],
}
ONE_USER = {
    "edit": (spec_prompts.copy_edit, 400),
    "quote": (spec_prompts.quote_summary, 200),
    "turns": (spec_prompts.multi_turn, 400),
    "chat": (spec_prompts.open_chat, 200),
}


@dataclass(slots=True)
class Result:
    """One server on one workload, summed over repeats."""

    tokens: int = 0  # decode tokens (after each request's first)
    seconds: float = 0.0
    drafts: float = 0.0
    accepted: float = 0.0
    errors: list[str] = field(default_factory=list)

    @property
    def tok_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0


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
def servers(gguf: Path, names: list[str]) -> Iterator[dict[str, str]]:
    """Start the named servers (``HERON_SPECS``/``LLAMA_SPECS``), one port each; yields
    name -> base URL and stops them all on exit."""
    from heron.bench.peers import ensure_peer

    llama = str(ensure_peer("llama-server"))
    urls: dict[str, str] = {}
    procs: list[subprocess.Popen[bytes]] = []
    try:
        for port, name in enumerate(names, start=18601):
            if name in HERON_SPECS:
                cmd = [sys.executable, "-m", "heron.cli", "serve", "smollm2", *HERON_SPECS[name]]
                cmd += ["--port", str(port)]
                ready = f"http://127.0.0.1:{port}/ready"
            else:
                cmd = [llama, "-m", str(gguf), "-np", "16", "-c", "32768", *LLAMA_SPECS[name]]
                cmd += ["--port", str(port), "--host", "127.0.0.1"]
                ready = f"http://127.0.0.1:{port}/health"
            procs.append(start(cmd, ready))
            urls[name] = f"http://127.0.0.1:{port}"
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            proc.wait(30)


async def run_sequential(
    url: str, conversations: list[spec_prompts.Messages], max_tokens: int
) -> list[RequestRecord]:
    settings = RequestSettings(model="smollm2", max_tokens=max_tokens, suppress_eos=False)
    endpoint = Endpoint("server", url)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=None) as client:
        return [await stream_chat(client, endpoint, settings, m, t0) for m in conversations]


async def run_concurrent(
    url: str, conversations: list[spec_prompts.Messages], max_tokens: int
) -> tuple[list[RequestRecord], float]:
    settings = RequestSettings(model="smollm2", max_tokens=max_tokens, suppress_eos=False)
    endpoint = Endpoint("server", url)
    limits = httpx.Limits(max_connections=len(conversations) + 4)
    async with httpx.AsyncClient(timeout=None, limits=limits) as client:
        t0 = time.perf_counter()
        records = await asyncio.gather(
            *(stream_chat(client, endpoint, settings, m, t0) for m in conversations)
        )
        return list(records), time.perf_counter() - t0


def decode_span(record: RequestRecord) -> tuple[int, float]:
    """(tokens after the first, seconds after the first token) of one request."""
    if not record.ok or record.ttft is None:
        return 0, 0.0
    first = record.token_times[0]
    return max(record.num_tokens - 1, 0), record.t_end - first


def measure(
    name: str,
    url: str,
    workload: str,
    result: Result,
    records_out: list[dict[str, object]],
    num_requests: int,
) -> None:
    """Run ``workload`` once (its first ``num_requests`` requests; 16 users always 16) on
    the server ``name`` at ``url`` and fold it into ``result``."""
    before = scrape_spec_counters(url)
    if workload == "users16":
        records, wall = asyncio.run(run_concurrent(url, users16(), 128))
        result.tokens += sum(r.num_tokens for r in records if r.ok)
        result.seconds += wall
    else:
        build, max_tokens = ONE_USER[workload]
        records = asyncio.run(run_sequential(url, build()[:num_requests], max_tokens))
        for r in records:
            tokens, seconds = decode_span(r)
            result.tokens += tokens
            result.seconds += seconds
    counted = delta(before, scrape_spec_counters(url))
    if counted is not None:
        result.drafts += counted[0]
        result.accepted += counted[1]
    result.errors += [r.error for r in records if r.error is not None]
    for r in records:
        records_out.append({"server": name, "workload": workload, **r.to_dict()})


def users16() -> list[spec_prompts.Messages]:
    return spec_prompts.open_chat(16)


def summarize(results: dict[str, dict[str, Result]], llama_names: list[str]) -> str:
    """A markdown table: tok/s per workload and server, ratios and acceptance."""
    lines = []
    for workload, by_server in results.items():
        base = by_server.get("heron")
        llama = {n: by_server[n].tok_s for n in llama_names if n in by_server}
        best_llama = max(llama, key=lambda n: llama[n]) if llama else None
        lines.append(f"### {workload}")
        lines.append("| server | tok/s | vs heron | vs llama-server | vs best llama | accepted |")
        lines.append("|---|---|---|---|---|---|")
        for name, r in by_server.items():
            vs = f"{r.tok_s / base.tok_s:.2f}x" if base and base.tok_s else "-"
            vs_llama = by_server.get("llama-server")
            vl = f"{r.tok_s / vs_llama.tok_s:.2f}x" if vs_llama and vs_llama.tok_s else "-"
            vb = "-"
            if best_llama is not None and llama[best_llama]:
                vb = f"{r.tok_s / llama[best_llama]:.2f}x ({best_llama})"
            acc = f"{r.accepted / r.drafts:.0%} of {r.drafts:.0f}" if r.drafts else "-"
            err = f" ({len(r.errors)} errors)" if r.errors else ""
            lines.append(f"| {name}{err} | {r.tok_s:.1f} | {vs} | {vl} | {vb} | {acc} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("-o", "--output", type=Path, default=Path("docs/bench/speculative"))
    parser.add_argument(
        "--requests", type=int, default=4, help="one-user requests per workload (at most 4)"
    )
    parser.add_argument(
        "--workloads", default="edit,quote,turns,chat,users16", help="comma-separated"
    )
    parser.add_argument(
        "--servers",
        default=",".join([*HERON_SPECS, *LLAMA_SPECS]),
        help="comma-separated names from HERON_SPECS and LLAMA_SPECS",
    )
    args = parser.parse_args()
    from benchmarks.cold_start import stored_gguf

    names = args.servers.split(",")
    unknown = [n for n in names if n not in HERON_SPECS and n not in LLAMA_SPECS]
    if unknown:
        parser.error(f"unknown servers {unknown}")
    workloads = args.workloads.split(",")
    llama_names = [n for n in names if n in LLAMA_SPECS]
    results: dict[str, dict[str, Result]] = {w: {} for w in workloads}
    records: list[dict[str, object]] = []
    for rep in range(args.repeat):
        # Fresh servers for every repeat: a repeat sends the same prompts again, and a
        # proposer that learns across requests (``suffix``, llama-server's ``ngram-mod``)
        # would copy its own earlier answers.
        with servers(stored_gguf("smollm2"), names) as urls:
            for url in urls.values():  # warm every server on a prompt no workload sends
                asyncio.run(run_sequential(url, spec_prompts.warm_up(), 8))
            order = names[rep % len(names) :] + names[: rep % len(names)]
            for workload in workloads:
                for name in order:
                    if workload == "users16" and name not in HERON_SPECS:
                        continue
                    result = results[workload].setdefault(name, Result())
                    measure(name, urls[name], workload, result, records, args.requests)
                    print(f"rep {rep} {workload:8} {name:24} {result.tok_s:7.1f} tok/s", flush=True)
    # Keep the table's server order stable.
    for workload in workloads:
        results[workload] = {n: results[workload][n] for n in names if n in results[workload]}
    out = args.output
    out.mkdir(parents=True, exist_ok=True)
    table = summarize(results, llama_names)
    (out / "summary.md").write_text(table)
    summary = {
        w: {
            n: {
                "tok_s": r.tok_s,
                "tokens": r.tokens,
                "seconds": r.seconds,
                "draft_tokens": r.drafts,
                "accepted_tokens": r.accepted,
                "errors": r.errors,
            }
            for n, r in by.items()
        }
        for w, by in results.items()
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    print(table)


if __name__ == "__main__":
    main()
