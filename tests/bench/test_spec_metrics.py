"""``heron bench`` reads speculative decoding's acceptance from an endpoint's /metrics."""

from __future__ import annotations

from heron.bench.orchestrate import BenchResult, Run
from heron.bench.report import summary_table
from heron.bench.spec_metrics import delta, parse_spec_counters
from heron.bench.workload import RequestSettings, build_workload
from tests.bench.test_report import _records

METRICS = """\
# HELP heron:spec_decode_num_draft_tokens_total Draft tokens verified (speculative decoding).
# TYPE heron:spec_decode_num_draft_tokens_total counter
heron:spec_decode_num_draft_tokens_total{model_name="a"} 40.0
heron:spec_decode_num_draft_tokens_total{model_name="b"} 10.0
heron:spec_decode_num_accepted_tokens_total{model_name="a"} 30.0
heron:spec_decode_num_accepted_tokens_total{model_name="b"} 5.0
heron:spec_decode_num_accepted_tokens_per_pos_total{model_name="a",position="0"} 9.0
"""


def test_counters_are_summed_over_models() -> None:
    assert parse_spec_counters(METRICS) == (50.0, 35.0)
    assert parse_spec_counters("heron:num_requests_running 1.0\n") is None
    assert delta((50.0, 35.0), (90.0, 65.0)) == (40.0, 30.0)
    assert delta(None, (1.0, 1.0)) is None


def test_the_table_shows_acceptance_only_when_reported() -> None:
    result = BenchResult(build_workload("sweep", (1,)), RequestSettings(), ["heron", "peer"])
    result.runs.append(Run("heron", 0, 1, 0, _records("heron", 1, 0.01, 0.005, 11), (40.0, 30.0)))
    result.runs.append(Run("peer", 0, 1, 0, _records("peer", 1, 0.1, 0.01, 11)))
    summaries = result.summaries()
    assert [s.spec_acceptance for s in summaries] == [0.75, None]
    table = summary_table(summaries)
    assert table[0].rstrip(" |").endswith("spec accept %")
    assert table[2].rstrip(" |").endswith("75.0")
    plain = BenchResult(build_workload("sweep", (1,)), RequestSettings(), ["peer"])
    plain.runs.append(Run("peer", 0, 1, 0, _records("peer", 1, 0.1, 0.01, 11)))
    assert "spec accept" not in summary_table(plain.summaries())[0]
