"""``heron bench`` reads a data-parallel server's per-replica prefix-cache hit rates from
its /metrics."""

from __future__ import annotations

from heron.bench.orchestrate import BenchResult, Run
from heron.bench.replica_metrics import hit_rates, parse_replica_counters, replica_delta
from heron.bench.report import summary_table
from heron.bench.workload import RequestSettings, build_workload
from tests.bench.test_report import _records

METRICS = """\
# TYPE heron:replica_prefix_cache_hits_total counter
heron:replica_prefix_cache_hits_total{model_name="a",replica="0"} 30.0
heron:replica_prefix_cache_hits_total{model_name="a",replica="1"} 0.0
heron:replica_prefix_cache_hits_total{model_name="b",replica="0"} 10.0
heron:replica_prefix_cache_hits_created{model_name="a",replica="0"} 1.7e+09
heron:replica_prefix_cache_queries_total{model_name="a",replica="0"} 60.0
heron:replica_prefix_cache_queries_total{model_name="a",replica="1"} 40.0
heron:replica_prefix_cache_queries_total{model_name="b",replica="0"} 20.0
heron:replica_requests_routed_total{model_name="a",replica="10"} 0.0
heron:replica_prefix_cache_queries_total{model_name="a",replica="10"} 0.0
heron:prefix_cache_hits_total{model_name="a"} 40.0
"""


def test_counters_are_per_replica_and_summed_over_models() -> None:
    counters = parse_replica_counters(METRICS)
    assert counters == {"0": (40.0, 80.0, 0.0), "1": (0.0, 40.0, 0.0), "10": (0.0, 0.0, 0.0)}
    assert list(counters) == ["0", "1", "10"]  # numeric order
    assert parse_replica_counters('heron:prefix_cache_hits_total{model_name="a"} 1.0\n') is None
    after = {"0": (50.0, 100.0, 3.0), "1": (20.0, 60.0, 2.0), "10": (0.0, 0.0, 0.0)}
    grown = replica_delta(counters, after)
    assert grown == {"0": (10.0, 20.0, 3.0), "1": (20.0, 20.0, 2.0), "10": (0.0, 0.0, 0.0)}
    assert replica_delta(None, after) is None
    assert hit_rates([grown, {"0": (10.0, 20.0, 1.0)}]) == {"0": 0.5, "1": 1.0, "10": 0.0}
    assert hit_rates([None]) is None


def test_the_table_shows_replica_hit_rates_only_when_reported() -> None:
    result = BenchResult(build_workload("sweep", (1,)), RequestSettings(), ["dp", "one"])
    records = _records("dp", 1, 0.01, 0.005, 11)
    result.runs.append(
        Run("dp", 0, 1, 0, records, None, {"0": (9.0, 10.0, 4.0), "1": (1.0, 4.0, 2.0)})
    )
    result.runs.append(Run("one", 0, 1, 0, _records("one", 1, 0.1, 0.01, 11)))
    summaries = result.summaries()
    assert summaries[0].replica_hit_rates == {"0": 0.9, "1": 0.25}
    assert summaries[1].replica_hit_rates is None
    table = summary_table(summaries)
    assert table[0].rstrip(" |").endswith("prefix hit % by replica")
    assert table[2].rstrip(" |").endswith("0:90 1:25")
    plain = BenchResult(build_workload("sweep", (1,)), RequestSettings(), ["one"])
    plain.runs.append(Run("one", 0, 1, 0, _records("one", 1, 0.1, 0.01, 11)))
    assert "by replica" not in summary_table(plain.summaries())[0]
