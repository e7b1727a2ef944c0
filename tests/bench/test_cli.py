"""``heron bench`` through the Typer app: argument errors, and whole runs against the fake
server (tests/bench/conftest.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from heron.bench.targets import free_port
from heron.bench.workload import DEFAULT_PROMPT
from heron.cli.main import app
from tests.bench.conftest import FakeServer

runner = CliRunner()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--endpoint", "http://127.0.0.1:1"], "expected NAME=URL"),
        (["--endpoint", "a=localhost:8080"], "must start http"),
        (["-e", "a=http://x", "--workload", "burst"], "unknown workload 'burst'"),
        (["-e", "a=http://x", "-w", "sweep", "--users", "0"], "--users must be >= 1"),
        (["-e", "a=http://x", "-w", "sweep", "--users", "4,-2"], "--users must be >= 1"),
        (["-e", "a=http://x", "-w", "concurrent", "--users", "two"], "not a whole number"),
        (["-e", "a=http://x", "--compare"], "--compare needs two or more endpoints"),
        (["-e", "a=http://x", "-e", "a=http://y"], "'a' is used twice"),
        (["-e", "a=http://x", "--baseline", "b"], "--baseline 'b' is not one of a"),
        (["--peer", "ollama"], "unknown peer 'ollama'"),
        (["-e", "a=http://x", "--max-tokens", "0"], "--max-tokens must be at least 1"),
        (["-e", "a=http://x", "--repeat", "0"], "--repeat must be >= 1"),
        ([], "nothing to measure"),
    ],
)
def test_argument_errors(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["bench", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_concurrent_run_writes_results(fake: FakeServer, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["bench", "-e", f"fake={fake.base_url}", "--model", "ok", "-w", "concurrent",
            "--users", "2", "--max-tokens", "3", "--eos-token-id", "2", "-o", str(out)]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "| fake | 2 | 2/2 |" in result.output
    doc = json.loads((out / "results.json").read_text())
    assert doc["summaries"][0]["num_ok"] == 2
    assert [r["num_tokens"] for r in doc["runs"][0]["records"]] == [3, 3]
    assert len(doc["warmups"]) == 1  # one warm-up request before measuring
    assert len(fake.bodies) == 3
    assert fake.bodies[-1]["logit_bias"] == {"2": -100}
    assert sorted(p.name for p in out.iterdir()) == [
        "results.json", "results.md", "throughput.png", "ttft.png"]  # fmt: skip


def test_compare_alternates_and_records_failures(fake: FakeServer, tmp_path: Path) -> None:
    dead = f"http://127.0.0.1:{free_port()}"
    args = ["bench", "--compare", "-e", f"a={fake.base_url}", "-e", f"o={fake.base_url}@ollama",
            "-e", f"dead={dead}", "--model", "ok", "-w", "sweep", "--users", "1,2",
            "--repeat", "2", "--warmup", "0", "--max-tokens", "2", "--baseline", "o",
            "-o", str(tmp_path), "--no-plots"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    doc = json.loads((tmp_path / "results.json").read_text())
    order = [(r["users"], r["repeat"], r["endpoint"]) for r in doc["runs"]]
    assert order == [
        (1, 0, "a"), (1, 0, "o"), (1, 0, "dead"), (1, 1, "dead"), (1, 1, "o"), (1, 1, "a"),
        (2, 0, "a"), (2, 0, "o"), (2, 0, "dead"), (2, 1, "dead"), (2, 1, "o"), (2, 1, "a"),
    ]  # fmt: skip
    by = {(s["endpoint"], s["users"]): s for s in doc["summaries"]}
    assert by["a", 2]["num_requests"] == 4 and by["a", 2]["num_ok"] == 4  # 2 users x 2 repeats
    assert by["dead", 2]["success_rate"] == 0.0
    assert next(iter(by["dead", 1]["errors"])).startswith("ConnectError")
    assert {r["endpoint"] for r in doc["ratios"]} == {"a", "dead"}
    assert "## Errors" in result.output
    assert not (tmp_path / "ttft.png").exists()


def test_multi_turn_repeats_and_levels_never_replay_a_conversation(
    fake: FakeServer, tmp_path: Path
) -> None:
    args = ["bench", "-e", f"a={fake.base_url}", "--model", "ok", "-w", "multi-turn",
            "--users", "1,2", "--conversations", "2", "--turns", "2", "--repeat", "2",
            "--warmup", "0", "--max-tokens", "2", "-o", str(tmp_path), "--no-plots"]  # fmt: skip
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    openings = [b["messages"][0]["content"] for b in fake.bodies if len(b["messages"]) == 1]
    # 2 levels x 2 repeats x 2 conversations, each opened once with a tag of its own
    assert sorted(openings) == sorted(f"[conversation {n}] {DEFAULT_PROMPT}" for n in range(1, 9))


def test_plots_without_matplotlib_say_how_to_get_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import importlib.util
    import sys

    from heron.bench.plot import write_plots
    from heron.bench.workload import BenchError

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util,
        "find_spec",
        lambda name, *a: None if name == "matplotlib" else find_spec(name, *a),
    )
    args = ["bench", "-e", "a=http://127.0.0.1:1", "-o", str(tmp_path)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert "heron bench --plots needs matplotlib: pip install 'heron[bench]'" in result.output
    assert not list(tmp_path.iterdir())  # refused before measuring anything

    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now fails
    with pytest.raises(BenchError, match=r"pip install 'heron\[bench\]'"):
        write_plots(tmp_path, [])
