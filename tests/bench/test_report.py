"""results.json, results.md and the PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from heron.bench.client import RequestRecord
from heron.bench.orchestrate import BenchResult, Run
from heron.bench.plot import write_plots
from heron.bench.report import SCHEMA, ratios, to_json, to_markdown, write_results
from heron.bench.workload import RequestSettings, build_workload

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _records(name: str, users: int, ttft: float, gap: float, n: int) -> list[RequestRecord]:
    out = []
    for u in range(users):
        times = [ttft + i * gap for i in range(n)]
        r = RequestRecord(t_send=0.0, token_times=times, t_end=times[-1], usage_tokens=n)
        r.endpoint, r.users, r.user = name, users, u
        out.append(r)
    return out


def _result() -> BenchResult:
    wl = build_workload("sweep", (1, 4))
    result = BenchResult(wl, RequestSettings(eos_token_ids=(2,)), ["heron", "peer"])
    for level, users in enumerate((1, 4)):
        # heron: 2x faster decode and 10x lower TTFT than the peer at every level
        result.runs.append(Run("heron", level, users, 0, _records("heron", users, 0.01, 0.005, 11)))
        result.runs.append(Run("peer", level, users, 0, _records("peer", users, 0.1, 0.01, 11)))
    failed = RequestRecord(t_send=0.0, t_end=0.01, error="HTTP 503: queue | full")
    failed.endpoint, failed.users = "peer", 4
    result.runs[-1].records.append(failed)
    return result


def test_json_schema_and_ratios(tmp_path: Path) -> None:
    result = _result()
    doc = to_json(result, "peer", [{"name": "heron"}, {"name": "peer"}], ["heron", "bench"])
    assert doc["schema"] == SCHEMA
    assert set(doc) >= {"environment", "command", "workload", "settings", "endpoints", "baseline",
                        "summaries", "ratios", "runs", "warmups", "interrupted"}  # fmt: skip
    assert set(doc["environment"]) >= {"cpu_count", "platform", "heron_version", "python"}
    assert doc["settings"]["request_body"]["openai"]["logit_bias"] == {"2": -100}
    assert doc["settings"]["api_key"] is False
    assert [lv["users"] for lv in doc["workload"]["levels"]] == [1, 4]
    assert len(doc["runs"]) == 4
    rec = doc["runs"][0]["records"][0]
    assert set(rec) >= {"t_send", "t_end", "token_times", "num_tokens", "ok", "error", "turn"}
    summary = doc["summaries"][3]
    assert (summary["endpoint"], summary["users"], summary["num_ok"]) == ("peer", 4, 4)
    assert summary["success_rate"] == pytest.approx(0.8)
    assert set(summary["ttft_s"]) == {"count", "mean", "p50", "p90", "p99"}
    heron4 = [r for r in doc["ratios"] if r["users"] == 4][0]
    assert heron4["endpoint"] == "heron" and heron4["baseline"] == "peer"
    assert heron4["decode_tok_s_mean"] == pytest.approx(2.0)
    assert heron4["ttft_p50"] == pytest.approx(0.1)
    assert heron4["agg_tok_s"] == pytest.approx(0.2 / 0.06)  # wall 0.06 s vs 0.2 s, same tokens

    paths = write_results(tmp_path / "out", doc, to_markdown(doc, result.summaries()))
    assert json.loads(paths[0].read_text())["schema"] == SCHEMA
    assert paths[1].read_text().startswith("# heron bench: sweep")


def test_markdown_tables() -> None:
    result = _result()
    doc = to_json(result, "heron", [], ["heron", "bench", "--prompt", "a b"])
    md = to_markdown(doc, result.summaries())
    assert "Command: `heron bench --prompt 'a b'`" in md
    assert "| endpoint | users | ok | tok/req | agg tok/s |" in md
    assert "| heron | 4 | 4/4 | 11 |" in md
    assert "| heron | 1 | 1/1 |" in md
    assert "| peer | 4 | 4/5 |" in md
    assert "## Ratio to heron" in md
    assert "| peer | 4 |" in md and "| 0.50x | 10.00x |" in md
    assert "## Errors" in md and "HTTP 503: queue \\| full" in md
    assert "logit_bias -100 on ids 2" in md


def test_ratios_skip_missing_levels() -> None:
    result = _result()
    summaries = [s for s in result.summaries() if not (s.endpoint == "heron" and s.users == 4)]
    assert [r["users"] for r in ratios(summaries, "heron")] == [1]


def test_plots_are_png(tmp_path: Path) -> None:
    paths = write_plots(tmp_path, _result().summaries(), "sweep")
    assert [p.name for p in paths] == ["throughput.png", "ttft.png"]
    for p in paths:
        assert p.read_bytes()[:8] == PNG_MAGIC


def test_plots_skip_without_data(tmp_path: Path) -> None:
    assert write_plots(tmp_path, []) == []
