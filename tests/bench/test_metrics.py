"""Metrics as pure functions, checked with exact numbers."""

from __future__ import annotations

import random

import numpy as np
import pytest

from heron.bench.client import RequestRecord
from heron.bench.metrics import (
    decode_rate,
    itl_samples,
    percentile,
    ratio,
    stats,
    summarize,
    wall_time,
)


def rec(t_send: float, times: list[float], t_end: float, **kw: object) -> RequestRecord:
    return RequestRecord(t_send=t_send, token_times=list(times), t_end=t_end, **kw)  # type: ignore[arg-type]


def test_percentile_linear_interpolation() -> None:
    xs = [4.0, 1.0, 3.0, 2.0]  # order does not matter
    assert percentile(xs, 0) == 1.0
    assert percentile(xs, 50) == 2.5  # rank 1.5
    assert percentile(xs, 90) == pytest.approx(3.7)  # rank 2.7
    assert percentile(xs, 99) == pytest.approx(3.97)  # rank 2.97
    assert percentile(xs, 100) == 4.0
    assert percentile([5.0], 99) == 5.0
    assert percentile([], 50) is None
    with pytest.raises(ValueError):
        percentile(xs, 101)


def test_percentile_matches_numpy_linear() -> None:
    rng = random.Random(0)
    for n in (1, 2, 3, 10, 101):
        xs = [rng.uniform(0, 10) for _ in range(n)]
        for p in (0, 1, 25, 50, 90, 99, 100):
            assert percentile(xs, p) == pytest.approx(float(np.percentile(xs, p)))


def test_stats() -> None:
    s = stats([1.0, 2.0, 3.0, 4.0])
    assert s is not None
    assert (s.count, s.mean, s.p50) == (4, 2.5, 2.5)
    assert stats([]) is None


def test_itl_one_token_per_chunk() -> None:
    r = rec(0.0, [1.0, 1.1, 1.3, 1.6], 1.7)
    assert itl_samples(r) == pytest.approx([0.1, 0.2, 0.3])
    assert decode_rate(r) == pytest.approx(3 / 0.6)


def test_itl_several_tokens_per_chunk_scales_gaps() -> None:
    # 4 chunks carrying 7 tokens: each gap counts for (7-1)/(4-1) = 2 tokens, so it is halved,
    # and the mean ITL is (last - first) / (n - 1).
    r = rec(0.0, [1.0, 1.1, 1.3, 1.6], 1.7, usage_tokens=7)
    assert itl_samples(r) == pytest.approx([0.05, 0.1, 0.15])
    assert sum(itl_samples(r)) / 3 == pytest.approx(0.6 / 6)
    assert decode_rate(r) == pytest.approx(6 / 0.6)


def test_itl_and_decode_undefined_below_two_tokens() -> None:
    assert itl_samples(rec(0.0, [1.0], 1.0)) == []
    assert decode_rate(rec(0.0, [1.0], 1.0)) is None
    assert decode_rate(rec(0.0, [1.0], 1.0, usage_tokens=5)) is None  # one chunk: no span
    assert decode_rate(rec(0.0, [], 1.0, error="x")) is None


def test_wall_time() -> None:
    assert wall_time([rec(0.5, [1.0], 2.0), rec(0.2, [0.4], 1.5)]) == pytest.approx(1.8)
    assert wall_time([]) == 0.0


def test_summarize_exact() -> None:
    run1 = [
        rec(0.0, [0.5, 1.0, 1.5], 1.6),
        rec(0.0, [], 0.1, error="HTTP 500: boom"),
    ]
    run2 = [rec(0.0, [0.2, 0.4, 0.6, 0.8, 1.0], 1.0, usage_tokens=5, prompt_tokens=12)]
    s = summarize("heron", 2, [run1, run2])
    assert (s.endpoint, s.users, s.num_requests, s.num_ok) == ("heron", 2, 3, 2)
    assert s.success_rate == pytest.approx(2 / 3)
    assert s.wall_s == pytest.approx(2.6)  # 1.6 + 1.0: repeats add up
    assert s.total_tokens == 8  # failed requests do not count
    assert s.agg_tok_s == pytest.approx(8 / 2.6)
    assert s.ttft is not None and s.itl is not None and s.e2e is not None
    assert s.decode is not None
    assert (s.ttft.mean, s.ttft.p50) == pytest.approx((0.35, 0.35))
    assert (s.ttft.p90, s.ttft.p99) == pytest.approx((0.47, 0.497))
    # ITL samples: [0.5, 0.5] and [0.2] * 4
    assert s.itl.count == 6
    assert (s.itl.mean, s.itl.p50, s.itl.p90) == pytest.approx((0.3, 0.2, 0.5))
    assert (s.decode.mean, s.decode.p50) == pytest.approx((3.5, 3.5))  # 2.0 and 5.0 tok/s
    assert s.e2e.p50 == pytest.approx(1.3)
    assert s.errors == {"HTTP 500: boom": 1}
    assert s.prompt_tokens_mean == 12
    assert s.ttft_by_turn == {}  # single-turn


def test_summarize_ttft_by_turn() -> None:
    records = [
        rec(0.0, [0.4, 0.5], 0.6, turn=1),
        rec(1.0, [1.2, 1.3], 1.4, turn=2),
        rec(2.0, [2.1, 2.2], 2.3, turn=3),
        rec(3.0, [3.2, 3.3], 3.4, turn=1),
        rec(4.0, [4.2, 4.3], 4.4, turn=2),
        rec(5.0, [5.3, 5.4], 5.5, turn=3),
    ]
    s = summarize("x", 1, [records])
    assert sorted(s.ttft_by_turn) == [1, 2, 3]
    assert s.ttft_by_turn[1].p50 == pytest.approx(0.3)
    assert s.ttft_by_turn[2].p50 == pytest.approx(0.2)
    assert s.ttft_by_turn[3].p50 == pytest.approx(0.2)
    assert s.ttft_by_turn[3].count == 2


def test_summarize_all_failed() -> None:
    s = summarize("x", 4, [[rec(0.0, [], 0.01, error="ConnectError: refused")] * 4])
    assert (s.num_ok, s.success_rate, s.total_tokens, s.agg_tok_s) == (0, 0.0, 0, 0.0)
    assert s.ttft is None and s.itl is None and s.decode is None
    assert s.errors == {"ConnectError: refused": 4}


def test_ratio() -> None:
    assert ratio(4.0, 2.0) == 2.0
    assert ratio(None, 2.0) is None
    assert ratio(1.0, 0.0) is None
