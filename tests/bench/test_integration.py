"""``heron bench`` end to end: the CLI as a subprocess against a real ``heron serve``."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.server.conftest import running_server

pytestmark = pytest.mark.slow


def test_bench_concurrent_against_heron_serve(tmp_path: Path) -> None:
    out = tmp_path / "out"
    with running_server("--kv-cache-memory-mb", "64") as server:
        # NOTE: EOS is suppressed with ignore_eos alone here (no --eos-token-id, so no
        # logit_bias), which Heron honours.
        cmd = [sys.executable, "-m", "heron.cli", "bench", "--endpoint", f"heron={server.base_url}",
               "--workload", "concurrent", "--users", "2", "--max-tokens", "8",
               "--out", str(out), "--no-progress", "--no-plots"]  # fmt: skip
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr + done.stdout
    assert "| heron | 2 | 2/2 |" in done.stdout
    doc = json.loads((out / "results.json").read_text())
    (summary,) = doc["summaries"]
    assert (summary["num_requests"], summary["num_ok"], summary["total_tokens"]) == (2, 2, 16)
    records = doc["runs"][0]["records"]
    assert [r["usage_tokens"] for r in records] == [8, 8]  # EOS suppressed: all 8 every time
    assert all(r["ok"] and r["finish_reason"] == "length" for r in records)
    assert all(len(r["token_times"]) >= 1 and r["prompt_tokens"] > 0 for r in records)
    assert summary["ttft_s"]["p50"] > 0 and summary["agg_tok_s"] > 0
    assert doc["settings"]["request_body"]["openai"]["ignore_eos"] is True
