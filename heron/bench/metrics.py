"""Metrics of a level, as pure functions of its request records. Definitions (also in
docs/bench.md):

- TTFT: first content chunk's arrival minus the request's send time.
- Inter-token latency (ITL): the gaps between successive content chunks of a request. When the
  server's token count n differs from the chunk count k (chunks carrying several tokens), each
  gap is scaled by (k-1)/(n-1), so a request's mean ITL is always (last - first) / (n-1).
- Decode tok/s of a request: (n-1) / (last chunk - first chunk); undefined for n < 2.
- End-to-end latency: end of the stream minus send time.
- Aggregate tok/s: tokens of the successful requests / wall time, the wall time of one run
  being its last end minus its first send; repeats add up tokens and wall times.
- Percentiles: linear interpolation between closest ranks (numpy's default "linear").

Only successful requests enter the latency and rate statistics; success rate counts all.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from heron.bench.client import RequestRecord

PERCENTILES = (50, 90, 99)


def percentile(values: Sequence[float], p: float) -> float | None:
    """The ``p``-th percentile (0..100) by linear interpolation: with the values sorted as
    x[0..n-1], rank r = p/100 * (n-1) and the result is x[floor r] + (r - floor r) *
    (x[ceil r] - x[floor r]). None for no values."""
    if not 0 <= p <= 100:
        raise ValueError(f"percentile {p} is outside 0..100")
    if not values:
        return None
    xs = sorted(values)
    rank = p / 100 * (len(xs) - 1)
    lo = math.floor(rank)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (rank - lo) * (xs[hi] - xs[lo])


@dataclass(frozen=True, slots=True)
class Stats:
    """Count, mean and percentiles of one metric's samples."""

    count: int
    mean: float
    p50: float
    p90: float
    p99: float

    def to_dict(self) -> dict[str, float]:
        return {
            "count": self.count,
            "mean": self.mean,
            "p50": self.p50,
            "p90": self.p90,
            "p99": self.p99,
        }


def stats(values: Sequence[float]) -> Stats | None:
    """None for no samples."""
    if not values:
        return None
    p50, p90, p99 = (percentile(values, p) for p in PERCENTILES)
    assert p50 is not None and p90 is not None and p99 is not None
    return Stats(len(values), sum(values) / len(values), p50, p90, p99)


def itl_samples(record: RequestRecord) -> list[float]:
    """Inter-token gaps of one request, scaled by (k-1)/(n-1) for k chunks and n tokens."""
    times, n = record.token_times, record.num_tokens
    if len(times) < 2 or n < 2:
        return []
    scale = (len(times) - 1) / (n - 1)
    return [(b - a) * scale for a, b in zip(times, times[1:], strict=False)]


def decode_rate(record: RequestRecord) -> float | None:
    """(n-1) / (last chunk - first chunk) in tokens per second; None when undefined."""
    times, n = record.token_times, record.num_tokens
    if len(times) < 2 or n < 2 or times[-1] <= times[0]:
        return None
    return (n - 1) / (times[-1] - times[0])


def wall_time(records: Iterable[RequestRecord]) -> float:
    """One run's wall time: its last end minus its first send (0 for no records)."""
    rs = list(records)
    if not rs:
        return 0.0
    return max(r.t_end for r in rs) - min(r.t_send for r in rs)


@dataclass(frozen=True, slots=True)
class LevelSummary:
    """One endpoint at one level, over all repeats."""

    endpoint: str
    users: int
    num_requests: int
    num_ok: int
    wall_s: float
    total_tokens: int
    ttft: Stats | None
    itl: Stats | None
    e2e: Stats | None
    decode: Stats | None  # per-request decode tok/s
    ttft_by_turn: dict[int, Stats] = field(default_factory=dict)
    prompt_tokens_mean: float | None = None
    errors: dict[str, int] = field(default_factory=dict)
    # accepted / proposed draft tokens (speculative decoding), when the endpoint reports them
    spec_acceptance: float | None = None
    # prefix-cache hits / queries per replica of a data-parallel Heron ("0", "1", ...)
    replica_hit_rates: dict[str, float] | None = None

    @property
    def success_rate(self) -> float:
        return self.num_ok / self.num_requests if self.num_requests else 0.0

    @property
    def tokens_per_request(self) -> float | None:
        """Mean tokens of a successful request (below max_tokens: some ended early)."""
        return self.total_tokens / self.num_ok if self.num_ok else None

    @property
    def agg_tok_s(self) -> float | None:
        return self.total_tokens / self.wall_s if self.wall_s > 0 else None

    def to_dict(self) -> dict[str, Any]:
        def d(s: Stats | None) -> dict[str, float] | None:
            return s.to_dict() if s is not None else None

        return {
            "endpoint": self.endpoint,
            "users": self.users,
            "num_requests": self.num_requests,
            "num_ok": self.num_ok,
            "success_rate": self.success_rate,
            "wall_s": self.wall_s,
            "total_tokens": self.total_tokens,
            "tokens_per_request": self.tokens_per_request,
            "agg_tok_s": self.agg_tok_s,
            "ttft_s": d(self.ttft),
            "itl_s": d(self.itl),
            "e2e_s": d(self.e2e),
            "decode_tok_s": d(self.decode),
            "ttft_by_turn_s": {str(t): s.to_dict() for t, s in self.ttft_by_turn.items()},
            "prompt_tokens_mean": self.prompt_tokens_mean,
            "errors": dict(self.errors),
            "spec_acceptance": self.spec_acceptance,
            "replica_prefix_hit_rates": self.replica_hit_rates,
        }


def summarize(endpoint: str, users: int, runs: Sequence[Sequence[RequestRecord]]) -> LevelSummary:
    """The summary of ``runs`` (one list of records per repeat) of one endpoint at one level."""
    records = [r for run in runs for r in run]
    ok = [r for r in records if r.ok]
    ttfts = [t for r in ok if (t := r.ttft) is not None]
    rates = [x for r in ok if (x := decode_rate(r)) is not None]
    by_turn: dict[int, list[float]] = {}
    for r in ok:
        if r.ttft is not None:
            by_turn.setdefault(r.turn, []).append(r.ttft)
    prompts = [r.prompt_tokens for r in ok if r.prompt_tokens is not None]
    errors = Counter((r.error or "")[:200] for r in records if not r.ok)
    turn_stats = {t: s for t, v in sorted(by_turn.items()) if (s := stats(v)) is not None}
    return LevelSummary(
        endpoint=endpoint,
        users=users,
        num_requests=len(records),
        num_ok=len(ok),
        wall_s=sum(wall_time(run) for run in runs),
        total_tokens=sum(r.num_tokens for r in ok),
        ttft=stats(ttfts),
        itl=stats([g for r in ok for g in itl_samples(r)]),
        e2e=stats([r.e2e for r in ok]),
        decode=stats(rates),
        ttft_by_turn=turn_stats if len(turn_stats) > 1 else {},
        prompt_tokens_mean=sum(prompts) / len(prompts) if prompts else None,
        errors=dict(errors.most_common()),
    )


def ratio(value: float | None, baseline: float | None) -> float | None:
    """value / baseline, None when either is missing or the baseline is 0."""
    if value is None or baseline is None or baseline == 0:
        return None
    return value / baseline
