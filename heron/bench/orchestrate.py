"""The run loop: for each level, for each repeat, for each endpoint (alternating order).

    level 1:  prepare all targets (restart llama-server with -np = users)
              repeat 0: A B C        repeat 1: C B A        repeat 2: A B C ...
    level 2:  ...

Every endpoint gets ``warmup`` unmeasured requests right before its first measured run, and
again after its server restarts. Each run is one endpoint at one level: all its users start at once, each on its
own connection, and the run ends when the last request does.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import httpx

from heron.bench.client import RequestRecord, stream_chat
from heron.bench.metrics import LevelSummary, summarize, wall_time
from heron.bench.replica_metrics import (
    ReplicaCounters,
    hit_rates,
    replica_delta,
    scrape_replica_counters,
)
from heron.bench.spec_metrics import delta, scrape_spec_counters
from heron.bench.targets import Target
from heron.bench.workload import Endpoint, Level, RequestSettings, Workload, follow_up, run_order


class Reporter:
    """What a run tells its watcher; the default shows nothing."""

    def log(self, message: str) -> None:
        """A line about the run (servers starting, warm-up failures)."""

    def run_started(self, label: str, total: int) -> None:
        """A run of ``total`` requests begins."""

    def request_done(self, record: RequestRecord) -> None:
        """One measured request has ended (successfully or not)."""

    def run_finished(self, records: list[RequestRecord]) -> None:
        """The run begun last has ended with ``records``."""


@dataclass(slots=True)
class Run:
    """One endpoint at one level in one repeat."""

    endpoint: str
    level: int  # index into the workload's levels
    users: int
    repeat: int
    records: list[RequestRecord]
    # growth of the endpoint's speculative (draft, accepted) token counters over the run;
    # None when it exposes none
    spec: tuple[float, float] | None = None
    # growth of a data-parallel server's per-replica prefix-cache counters; None without
    replicas: ReplicaCounters | None = None

    @property
    def wall_s(self) -> float:
        return wall_time(self.records)


@dataclass(slots=True)
class BenchResult:
    """Everything measured so far (complete unless ``interrupted``)."""

    workload: Workload
    settings: RequestSettings
    endpoints: list[str]
    runs: list[Run] = field(default_factory=list)
    warmups: list[RequestRecord] = field(default_factory=list)
    interrupted: bool = False

    def summaries(self) -> list[LevelSummary]:
        """One summary per (level, endpoint), levels in order, endpoints as given."""
        out = []
        for index, level in enumerate(self.workload.levels):
            for name in self.endpoints:
                runs = [r.records for r in self.runs if r.level == index and r.endpoint == name]
                if runs:
                    mine = [r for r in self.runs if r.level == index and r.endpoint == name]
                    summary = summarize(name, level.users, runs)
                    out.append(
                        replace(
                            summary,
                            spec_acceptance=_acceptance([r.spec for r in mine]),
                            replica_hit_rates=hit_rates([r.replicas for r in mine]),
                        )
                    )
        return out


def _acceptance(deltas: list[tuple[float, float] | None]) -> float | None:
    """Accepted / proposed draft tokens over runs, None without any draft."""
    known = [d for d in deltas if d is not None]
    drafts = sum(d[0] for d in known)
    return sum(d[1] for d in known) / drafts if drafts > 0 else None


async def _single_user(
    client: httpx.AsyncClient,
    endpoint: Endpoint,
    settings: RequestSettings,
    prompt: str,
    user: int,
    num_requests: int,
    t0: float,
    reporter: Reporter,
) -> list[RequestRecord]:
    records = []
    for index in range(num_requests):
        messages = [{"role": "user", "content": prompt}]
        record = await stream_chat(client, endpoint, settings, messages, t0)
        record.user, record.index = user, index
        reporter.request_done(record)
        records.append(record)
    return records


async def _conversation_user(
    client: httpx.AsyncClient,
    endpoint: Endpoint,
    settings: RequestSettings,
    prompt: str,
    user: int,
    level: Level,
    t0: float,
    reporter: Reporter,
    first_tag: int,
) -> list[RequestRecord]:
    records = []
    for index, conversation in enumerate(range(user, level.conversations, level.users)):
        # A tag of its own, so that a conversation's first turn finds no other conversation's
        # (or the warm-up's, or an earlier repeat's) prompt in a prefix cache: turn 1 is cold,
        # later turns may hit.
        opening = f"[conversation {first_tag + conversation}] {prompt}"
        messages = [{"role": "user", "content": opening}]
        for turn in range(1, level.turns + 1):
            record = await stream_chat(client, endpoint, settings, messages, t0)
            record.user, record.index = user, index
            record.conversation, record.turn = conversation, turn
            reporter.request_done(record)
            records.append(record)
            # A failed turn leaves an empty reply; the conversation goes on, so every level
            # sends the same number of requests.
            messages = [
                *messages,
                {"role": "assistant", "content": record.text},
                {"role": "user", "content": follow_up(turn + 1)},
            ]
    return records


def _client(users: int, settings: RequestSettings) -> httpx.AsyncClient:
    limits = httpx.Limits(max_connections=users + 1, max_keepalive_connections=users + 1)
    timeout = httpx.Timeout(settings.timeout, connect=30.0)
    # trust_env=False: proxy variables must not reroute a benchmark of local servers.
    return httpx.AsyncClient(limits=limits, timeout=timeout, trust_env=False)


async def measure_level(
    endpoint: Endpoint,
    settings: RequestSettings,
    level: Level,
    prompt: str,
    reporter: Reporter | None = None,
    first_tag: int = 1,
) -> list[RequestRecord]:
    """Run one level against one endpoint; records in send order, times from the run's
    start. Multi-turn conversations are tagged ``first_tag``, ``first_tag + 1``, ...; give
    each run of the same endpoint its own range, so no run replays another's prompts."""
    reporter = reporter or Reporter()
    async with _client(level.users, settings) as client:
        t0 = time.perf_counter()
        if level.multi_turn:
            jobs = [
                _conversation_user(
                    client, endpoint, settings, prompt, u, level, t0, reporter, first_tag
                )
                for u in range(min(level.users, level.conversations))
            ]
        else:
            jobs = [
                _single_user(
                    client, endpoint, settings, prompt, u, level.requests_per_user, t0, reporter
                )
                for u in range(level.users)
            ]
        per_user = await asyncio.gather(*jobs)
    records = [r for user_records in per_user for r in user_records]
    records.sort(key=lambda r: r.t_send)
    for r in records:
        r.endpoint, r.users = endpoint.name, level.users
    return records


async def warm_up(
    endpoint: Endpoint, settings: RequestSettings, prompt: str, num_requests: int
) -> list[RequestRecord]:
    """``num_requests`` unmeasured requests, one after another."""
    records = await measure_level(endpoint, settings, Level(1, num_requests), prompt)
    for r in records:
        r.users = 0
    return records


def run_bench(
    targets: Sequence[Target],
    result: BenchResult,
    reporter: Reporter | None = None,
) -> BenchResult:
    """Measure ``result.workload`` on every target, appending to ``result`` as runs end (so a
    KeyboardInterrupt leaves what was measured). Always stops every target on the way out."""
    reporter = reporter or Reporter()
    workload, settings = result.workload, result.settings
    by_name = {t.name: t for t in targets}
    warmed: set[str] = set()
    try:
        for target in targets:
            target.setup(reporter.log)
        for index, level in enumerate(workload.levels):
            # Warm up every endpoint before its first run, and again after its server restarts.
            fresh = {t.name for t in targets if t.prepare(level.users, reporter.log)}
            cold = fresh | ({t.name for t in targets} - warmed)
            warmed |= cold
            for repeat in range(workload.repeat):
                for name in run_order([t.name for t in targets], repeat):
                    target = by_name[name]
                    if name in cold and workload.warmup:
                        reporter.log(f"warming up {name}")
                        warm = asyncio.run(
                            warm_up(target.endpoint, settings, workload.prompt, workload.warmup)
                        )
                        result.warmups.extend(warm)
                        for r in warm:
                            if not r.ok:
                                reporter.log(f"warm-up request to {name} failed: {r.error}")
                    cold.discard(name)
                    label = f"{name}  users={level.users}"
                    if workload.repeat > 1:
                        label += f"  repeat {repeat + 1}/{workload.repeat}"
                    reporter.run_started(label, level.num_requests)
                    # Conversation tags: distinct for every level and repeat of this endpoint.
                    first_tag = 1 + (index * workload.repeat + repeat) * level.conversations
                    spec_before = scrape_spec_counters(target.endpoint.url)
                    replicas_before = scrape_replica_counters(target.endpoint.url)
                    records = asyncio.run(
                        measure_level(
                            target.endpoint, settings, level, workload.prompt, reporter, first_tag
                        )
                    )
                    spec = delta(spec_before, scrape_spec_counters(target.endpoint.url))
                    replicas = replica_delta(
                        replicas_before, scrape_replica_counters(target.endpoint.url)
                    )
                    reporter.run_finished(records)
                    for r in records:
                        r.repeat = repeat
                    result.runs.append(
                        Run(name, index, level.users, repeat, records, spec, replicas)
                    )
    except KeyboardInterrupt:
        result.interrupted = True
        raise
    finally:
        for target in targets:
            try:
                target.stop()
            except Exception as exc:  # stop the others all the same
                reporter.log(f"stopping {target.name} failed: {exc}")
    return result
