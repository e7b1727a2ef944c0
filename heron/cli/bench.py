"""``heron bench``: measure OpenAI- and Ollama-API chat endpoints under load (docs/bench.md)."""

from __future__ import annotations

import signal
import sys
from pathlib import Path
from types import FrameType
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
)

from heron.bench.client import RequestRecord
from heron.bench.metrics import summarize
from heron.bench.orchestrate import BenchResult, Reporter, run_bench
from heron.bench.targets import (
    PEER_NAMES,
    FixedTarget,
    HeronTarget,
    PeerTarget,
    Target,
    gguf_eos_ids,
    resolve_gguf,
)
from heron.bench.workload import (
    DEFAULT_MAX_TOKENS,
    DEFAULT_MODEL,
    DEFAULT_PROMPT,
    WORKLOADS,
    BenchError,
    RequestSettings,
    build_workload,
    parse_endpoint,
    parse_users,
    synth_prompt,
)


class ConsoleReporter(Reporter):
    """A progress bar per run on stderr (or plain lines), and one summary line when it ends."""

    def __init__(self, show_progress: bool) -> None:
        self.console = Console(stderr=True)
        self.progress: Progress | None = None
        if show_progress:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                console=self.console,
            )
        self.task: TaskID | None = None
        self.label = ""

    def __enter__(self) -> ConsoleReporter:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def log(self, message: str) -> None:
        self.console.print(message, markup=False, highlight=False, soft_wrap=True)

    def run_started(self, label: str, total: int) -> None:
        self.label = label
        if self.progress is not None:
            self.task = self.progress.add_task(label, total=total)

    def request_done(self, record: RequestRecord) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.advance(self.task)

    def run_finished(self, records: list[RequestRecord]) -> None:
        if self.progress is not None and self.task is not None:
            self.progress.remove_task(self.task)
            self.task = None
        s = summarize("", 0, [records])
        agg = f"{s.agg_tok_s:.1f}" if s.agg_tok_s is not None else "–"
        ttft = f"{s.ttft.p50 * 1000:.1f} ms" if s.ttft else "–"
        self.log(f"{self.label}: {s.num_ok}/{s.num_requests} ok, {agg} tok/s, TTFT p50 {ttft}")


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _targets(
    endpoints: list[str],
    *,
    heron: bool,
    heron_args: list[str],
    peers: list[str],
    model: str,
    model_path: Path | None,
    api_key: str | None,
    peer_max_slots: int,
    peer_ctx_per_slot: int,
    peer_threads: int | None,
    out: Path | None,
) -> list[Target]:
    """Heron first (when started here), then the given endpoints, then the peers."""
    targets: list[Target] = []
    if heron:
        served = str(model_path) if model_path is not None else model
        extra = list(heron_args)
        if model_path is not None and not any(a.startswith("--served-model-name") for a in extra):
            extra += ["--served-model-name", model]
        targets.append(HeronTarget(served, extra, api_key=api_key, log_dir=out))
    targets += [FixedTarget(parse_endpoint(e)) for e in endpoints]
    for kind in peers:
        assert model_path is not None
        targets.append(
            PeerTarget(kind, model_path, peer_max_slots, peer_ctx_per_slot, peer_threads)
        )
    names = [t.name for t in targets]
    for name in names:
        if names.count(name) > 1:
            raise BenchError(f"endpoint name {name!r} is used twice")
    if not targets:
        raise BenchError("nothing to measure: give --endpoint NAME=URL, --heron or --peer KIND")
    return targets


def bench(
    endpoint: Annotated[
        list[str] | None,
        typer.Option("--endpoint", "-e", help="NAME=URL or NAME=URL@ollama (repeat the option)."),
    ] = None,
    heron: Annotated[
        bool, typer.Option("--heron", help="Start `heron serve MODEL` and measure it as 'heron'.")
    ] = False,
    heron_arg: Annotated[
        list[str] | None,
        typer.Option("--heron-arg", help="Extra argument for that heron serve (repeat)."),
    ] = None,
    peer: Annotated[
        list[str] | None,
        typer.Option(help="Start a peer on the model's GGUF: llama-server or llama-cpp-python."),
    ] = None,
    model: Annotated[
        str, typer.Option(help="Model name sent in requests, and the model --heron serves.")
    ] = DEFAULT_MODEL,
    model_file: Annotated[
        str | None, typer.Option(help="GGUF file for peers and --heron (default: --model's).")
    ] = None,
    workload: Annotated[str, typer.Option("--workload", "-w", help="|".join(WORKLOADS))] = (
        "sequential"
    ),
    users: Annotated[
        list[str] | None,
        typer.Option(help="User counts: --users 1,16,32 or repeat (sweep: 1..64; concurrent: 8)."),
    ] = None,
    requests: Annotated[int, typer.Option(help="Requests of the sequential workload.")] = 10,
    requests_per_user: Annotated[
        int, typer.Option(help="Back-to-back requests per user (concurrent, sweep).")
    ] = 1,
    conversations: Annotated[int, typer.Option(help="Multi-turn conversations.")] = 5,
    turns: Annotated[int, typer.Option(help="Turns per multi-turn conversation.")] = 3,
    warmup: Annotated[int, typer.Option(help="Unmeasured requests per server start.")] = 1,
    repeat: Annotated[int, typer.Option(help="Repeats per level, in alternating order.")] = 1,
    compare: Annotated[
        bool, typer.Option("--compare", help="Require two or more endpoints (they alternate).")
    ] = False,
    baseline: Annotated[
        str | None, typer.Option(help="Endpoint the ratios divide by (default: the first).")
    ] = None,
    prompt: Annotated[str, typer.Option(help="The user message.")] = DEFAULT_PROMPT,
    prompt_tokens: Annotated[
        int | None, typer.Option(help="Pad the prompt with filler to about N tokens.")
    ] = None,
    max_tokens: Annotated[int, typer.Option(help="Tokens to generate.")] = DEFAULT_MAX_TOKENS,
    temperature: Annotated[float, typer.Option(help="Sampling temperature.")] = 0.0,
    ignore_eos: Annotated[
        bool, typer.Option(help="Suppress end of sequence (ignore_eos and logit_bias).")
    ] = True,
    eos_token_id: Annotated[
        list[int] | None,
        typer.Option(help="Token id for logit_bias -100 (repeat; default: the GGUF's, if known)."),
    ] = None,
    api_key: Annotated[str | None, typer.Option(help="Send Authorization: Bearer KEY.")] = None,
    timeout: Annotated[float, typer.Option(help="Seconds before a request counts as failed.")] = (
        600.0
    ),
    peer_max_slots: Annotated[int, typer.Option(help="Cap on llama-server -np.")] = 64,
    peer_ctx_per_slot: Annotated[int, typer.Option(help="llama-server context per slot.")] = 1024,
    peer_threads: Annotated[int | None, typer.Option(help="Peer threads (default: all).")] = None,
    out: Annotated[
        Path | None, typer.Option("--out", "-o", help="Write results.json, .md and plots here.")
    ] = None,
    plots: Annotated[bool, typer.Option(help="Write PNG plots with --out.")] = True,
    progress: Annotated[bool, typer.Option(help="Show progress bars.")] = True,
) -> None:
    """Measure chat endpoints under load: TTFT, inter-token latency, tok/s, success rate.

    Example: heron bench --heron --peer llama-server -w sweep --compare -o results
    """
    from heron.bench.plot import write_plots
    from heron.bench.report import to_json, to_markdown, write_results

    try:
        peers = list(peer or [])
        if workload not in WORKLOADS:
            raise BenchError(f"unknown workload {workload!r}; choose one of {', '.join(WORKLOADS)}")
        for kind in peers:
            if kind not in PEER_NAMES:
                raise BenchError(f"unknown peer {kind!r}; choose one of {', '.join(PEER_NAMES)}")
        if peer_max_slots < 1 or peer_ctx_per_slot < 1 or (peer_threads or 1) < 1:
            raise BenchError(
                "--peer-max-slots, --peer-ctx-per-slot and --peer-threads must be >= 1"
            )
        wl = build_workload(
            workload,
            parse_users(users or []),
            requests=requests,
            requests_per_user=requests_per_user,
            conversations=conversations,
            turns=turns,
            prompt=synth_prompt(prompt_tokens, prompt) if prompt_tokens is not None else prompt,
            warmup=warmup,
            repeat=repeat,
        )
        model_path = resolve_gguf(model, model_file) if (peers or model_file) else None
        eos_ids = tuple(eos_token_id or ())
        if ignore_eos and not eos_ids and model_path is not None:
            eos_ids = gguf_eos_ids(model_path)
        settings = RequestSettings(
            model=model,
            max_tokens=max_tokens,
            temperature=temperature,
            suppress_eos=ignore_eos,
            eos_token_ids=eos_ids,
            api_key=api_key,
            timeout=timeout,
        )
        targets = _targets(
            list(endpoint or []),
            heron=heron,
            heron_args=list(heron_arg or []),
            peers=peers,
            model=model,
            model_path=model_path,
            api_key=api_key,
            peer_max_slots=peer_max_slots,
            peer_ctx_per_slot=peer_ctx_per_slot,
            peer_threads=peer_threads,
            out=out,
        )
        names = [t.name for t in targets]
        if compare and len(targets) < 2:
            raise BenchError("--compare needs two or more endpoints")
        if baseline is not None and baseline not in names:
            raise BenchError(f"--baseline {baseline!r} is not one of {', '.join(names)}")
    except BenchError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None

    result = BenchResult(wl, settings, names)
    status = 0
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        with ConsoleReporter(progress and sys.stderr.isatty()) as reporter:
            run_bench(targets, result, reporter)
    except KeyboardInterrupt:
        done = "writing what was measured" if result.runs else "no run had finished"
        typer.echo(f"interrupted: {done}", err=True)
        status = 130
    except BenchError as exc:
        typer.echo(f"error: {exc}", err=True)
        status = 1
    finally:
        signal.signal(signal.SIGTERM, previous)
    if not result.runs:
        raise typer.Exit(status or 1)
    command = ["heron", *sys.argv[1:]]
    doc: dict[str, Any] = to_json(
        result, baseline or names[0], [t.describe() for t in targets], command
    )
    summaries = result.summaries()
    markdown = to_markdown(doc, summaries)
    typer.echo(markdown)
    if out is not None:
        paths = write_results(out, doc, markdown)
        if plots:
            title = f"{wl.kind}: {model}, {max_tokens} tokens"
            paths += write_plots(out, summaries, title)
        typer.echo("wrote " + ", ".join(str(p) for p in paths), err=True)
    if status:
        raise typer.Exit(status)
