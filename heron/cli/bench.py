"""``heron bench``: measure OpenAI- and Ollama-API chat endpoints under load (docs/bench.md)."""

from __future__ import annotations

import importlib.util
import signal
import sys
from dataclasses import dataclass
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
from heron.bench.plot import NEEDS_MATPLOTLIB
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
    Workload,
    build_workload,
    load_schema,
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


# The options of ``heron bench``, one alias each, so that the command's signature stays short.
EndpointOpt = Annotated[
    list[str] | None,
    typer.Option("--endpoint", "-e", help="NAME=URL or NAME=URL@ollama (repeat the option)."),
]
HeronOpt = Annotated[
    bool, typer.Option("--heron", help="Start `heron serve MODEL` and measure it as 'heron'.")
]
HeronArgOpt = Annotated[
    list[str] | None,
    typer.Option("--heron-arg", help="Extra argument for that heron serve (repeat)."),
]
PeerOpt = Annotated[
    list[str] | None,
    typer.Option(help="Start a peer on the model's GGUF: llama-server or llama-cpp-python."),
]
ModelOpt = Annotated[
    str, typer.Option(help="Model name sent in requests, and the model --heron serves.")
]
ModelFileOpt = Annotated[
    str | None, typer.Option(help="GGUF file for peers and --heron (default: --model's).")
]
WorkloadOpt = Annotated[str, typer.Option("--workload", "-w", help="|".join(WORKLOADS))]
UsersOpt = Annotated[
    list[str] | None,
    typer.Option(help="User counts: --users 1,16,32 or repeat (sweep: 1..64; concurrent: 8)."),
]
RequestsOpt = Annotated[int, typer.Option(help="Requests of the sequential workload.")]
RequestsPerUserOpt = Annotated[
    int, typer.Option(help="Back-to-back requests per user (concurrent, sweep).")
]
ConversationsOpt = Annotated[int, typer.Option(help="Multi-turn conversations.")]
TurnsOpt = Annotated[int, typer.Option(help="Turns per multi-turn conversation.")]
WarmupOpt = Annotated[int, typer.Option(help="Unmeasured requests per server start.")]
RepeatOpt = Annotated[int, typer.Option(help="Repeats per level, in alternating order.")]
CompareOpt = Annotated[
    bool, typer.Option("--compare", help="Require two or more endpoints (they alternate).")
]
BaselineOpt = Annotated[
    str | None, typer.Option(help="Endpoint the ratios divide by (default: the first).")
]
PromptOpt = Annotated[str, typer.Option(help="The user message.")]
PromptTokensOpt = Annotated[
    int | None, typer.Option(help="Pad the prompt with filler to about N tokens.")
]
MaxTokensOpt = Annotated[int, typer.Option(help="Tokens to generate.")]
TemperatureOpt = Annotated[float, typer.Option(help="Sampling temperature.")]
IgnoreEosOpt = Annotated[
    bool, typer.Option(help="Suppress end of sequence (ignore_eos and logit_bias).")
]
EosTokenIdOpt = Annotated[
    list[int] | None,
    typer.Option(help="Token id for logit_bias -100 (repeat; default: the GGUF's, if known)."),
]
ApiKeyOpt = Annotated[str | None, typer.Option(help="Send Authorization: Bearer KEY.")]
TimeoutOpt = Annotated[float, typer.Option(help="Seconds before a request counts as failed.")]
PeerMaxSlotsOpt = Annotated[int, typer.Option(help="Cap on llama-server -np.")]
PeerCtxPerSlotOpt = Annotated[int, typer.Option(help="llama-server context per slot.")]
PeerThreadsOpt = Annotated[int | None, typer.Option(help="Peer threads (default: all).")]
OutOpt = Annotated[
    Path | None, typer.Option("--out", "-o", help="Write results.json, .md and plots here.")
]
JsonSchemaOpt = Annotated[
    Path | None,
    typer.Option(help="Constrain every answer to this JSON schema file (structured output)."),
]
PlotsOpt = Annotated[bool, typer.Option(help="Write PNG plots with --out.")]
ProgressOpt = Annotated[bool, typer.Option(help="Show progress bars.")]


@dataclass(frozen=True, slots=True)
class BenchOptions:
    """The values of ``heron bench``'s options, by parameter name."""

    endpoint: list[str] | None
    heron: bool
    heron_arg: list[str] | None
    peer: list[str] | None
    model: str
    model_file: str | None
    workload: str
    users: list[str] | None
    requests: int
    requests_per_user: int
    conversations: int
    turns: int
    warmup: int
    repeat: int
    compare: bool
    baseline: str | None
    prompt: str
    prompt_tokens: int | None
    max_tokens: int
    temperature: float
    ignore_eos: bool
    eos_token_id: list[int] | None
    api_key: str | None
    timeout: float
    peer_max_slots: int
    peer_ctx_per_slot: int
    peer_threads: int | None
    json_schema: Path | None
    out: Path | None
    plots: bool
    progress: bool


def bench(
    endpoint: EndpointOpt = None,
    heron: HeronOpt = False,
    heron_arg: HeronArgOpt = None,
    peer: PeerOpt = None,
    model: ModelOpt = DEFAULT_MODEL,
    model_file: ModelFileOpt = None,
    workload: WorkloadOpt = "sequential",
    users: UsersOpt = None,
    requests: RequestsOpt = 10,
    requests_per_user: RequestsPerUserOpt = 1,
    conversations: ConversationsOpt = 5,
    turns: TurnsOpt = 3,
    warmup: WarmupOpt = 1,
    repeat: RepeatOpt = 1,
    compare: CompareOpt = False,
    baseline: BaselineOpt = None,
    prompt: PromptOpt = DEFAULT_PROMPT,
    prompt_tokens: PromptTokensOpt = None,
    max_tokens: MaxTokensOpt = DEFAULT_MAX_TOKENS,
    temperature: TemperatureOpt = 0.0,
    ignore_eos: IgnoreEosOpt = True,
    eos_token_id: EosTokenIdOpt = None,
    api_key: ApiKeyOpt = None,
    timeout: TimeoutOpt = 600.0,
    peer_max_slots: PeerMaxSlotsOpt = 64,
    peer_ctx_per_slot: PeerCtxPerSlotOpt = 1024,
    peer_threads: PeerThreadsOpt = None,
    json_schema: JsonSchemaOpt = None,
    out: OutOpt = None,
    plots: PlotsOpt = True,
    progress: ProgressOpt = True,
) -> None:
    """Measure chat endpoints under load: TTFT, inter-token latency, tok/s, success rate.

    Example: heron bench --heron --peer llama-server -w sweep --compare -o results
    """
    opts = BenchOptions(**locals())  # every parameter above, by name
    try:
        wl, settings, targets = _plan(opts)
    except BenchError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    result = BenchResult(wl, settings, [t.name for t in targets])
    status = _measure(targets, result, opts.progress)
    if not result.runs:
        raise typer.Exit(status or 1)
    report_status = _report(opts, result, targets)
    status = status or report_status
    if status:
        raise typer.Exit(status)


def _plan(opts: BenchOptions) -> tuple[Workload, RequestSettings, list[Target]]:
    """Check the options and build the workload, the request settings and the targets.
    Raises BenchError on anything a user must fix."""
    peers = list(opts.peer or [])
    if opts.workload not in WORKLOADS:
        raise BenchError(
            f"unknown workload {opts.workload!r}; choose one of {', '.join(WORKLOADS)}"
        )
    for kind in peers:
        if kind not in PEER_NAMES:
            raise BenchError(f"unknown peer {kind!r}; choose one of {', '.join(PEER_NAMES)}")
    if opts.peer_max_slots < 1 or opts.peer_ctx_per_slot < 1 or (opts.peer_threads or 1) < 1:
        raise BenchError("--peer-max-slots, --peer-ctx-per-slot and --peer-threads must be >= 1")
    prompt = opts.prompt
    if opts.prompt_tokens is not None:
        prompt = synth_prompt(opts.prompt_tokens, prompt)
    wl = build_workload(
        opts.workload,
        parse_users(opts.users or []),
        requests=opts.requests,
        requests_per_user=opts.requests_per_user,
        conversations=opts.conversations,
        turns=opts.turns,
        prompt=prompt,
        warmup=opts.warmup,
        repeat=opts.repeat,
    )
    model_path = resolve_gguf(opts.model, opts.model_file) if peers or opts.model_file else None
    eos_ids = tuple(opts.eos_token_id or ())
    if opts.ignore_eos and not eos_ids and model_path is not None:
        eos_ids = gguf_eos_ids(model_path)
    settings = RequestSettings(
        model=opts.model,
        max_tokens=opts.max_tokens,
        temperature=opts.temperature,
        suppress_eos=opts.ignore_eos,
        eos_token_ids=eos_ids,
        api_key=opts.api_key,
        timeout=opts.timeout,
        json_schema=load_schema(opts.json_schema),
    )
    targets = _targets(opts, peers, model_path)
    names = [t.name for t in targets]
    if opts.compare and len(targets) < 2:
        raise BenchError("--compare needs two or more endpoints")
    if opts.baseline is not None and opts.baseline not in names:
        raise BenchError(f"--baseline {opts.baseline!r} is not one of {', '.join(names)}")
    if opts.out is not None and opts.plots and importlib.util.find_spec("matplotlib") is None:
        raise BenchError(f"{NEEDS_MATPLOTLIB} (or pass --no-plots)")
    return wl, settings, targets


def _targets(opts: BenchOptions, peers: list[str], model_path: Path | None) -> list[Target]:
    """Heron first (when started here), then the given endpoints, then the peers."""
    targets: list[Target] = []
    if opts.heron:
        served = str(model_path) if model_path is not None else opts.model
        extra = list(opts.heron_arg or [])
        if model_path is not None and not any(a.startswith("--served-model-name") for a in extra):
            extra += ["--served-model-name", opts.model]
        targets.append(HeronTarget(served, extra, api_key=opts.api_key, log_dir=opts.out))
    targets += [FixedTarget(parse_endpoint(e)) for e in opts.endpoint or []]
    for kind in peers:
        assert model_path is not None
        targets.append(
            PeerTarget(
                kind, model_path, opts.peer_max_slots, opts.peer_ctx_per_slot, opts.peer_threads
            )
        )
    names = [t.name for t in targets]
    for name in names:
        if names.count(name) > 1:
            raise BenchError(f"endpoint name {name!r} is used twice")
    if not targets:
        raise BenchError("nothing to measure: give --endpoint NAME=URL, --heron or --peer KIND")
    return targets


def _measure(targets: list[Target], result: BenchResult, progress: bool) -> int:
    """Run the workload on every target into ``result``; returns the exit status so far (130
    when interrupted by Ctrl-C or SIGTERM, 1 after a BenchError, else 0)."""
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
    return status


def _report(opts: BenchOptions, result: BenchResult, targets: list[Target]) -> int:
    """Print the markdown report and write the files of ``--out``; returns 1 if the plots
    could not be drawn, else 0."""
    from heron.bench.plot import write_plots
    from heron.bench.report import to_json, to_markdown, write_results

    names = [t.name for t in targets]
    command = ["heron", *sys.argv[1:]]
    doc: dict[str, Any] = to_json(
        result, opts.baseline or names[0], [t.describe() for t in targets], command
    )
    summaries = result.summaries()
    markdown = to_markdown(doc, summaries)
    typer.echo(markdown)
    if opts.out is None:
        return 0
    paths = write_results(opts.out, doc, markdown)
    status = 0
    if opts.plots:
        title = f"{result.workload.kind}: {opts.model}, {opts.max_tokens} tokens"
        try:
            paths += write_plots(opts.out, summaries, title)
        except BenchError as exc:
            typer.echo(f"error: {exc}", err=True)
            status = 1
    typer.echo("wrote " + ", ".join(str(p) for p in paths), err=True)
    return status
