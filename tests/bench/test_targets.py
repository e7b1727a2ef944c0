"""Targets: the GGUF's end tokens, the heron serve command line, and when peers restart (with
a stand-in for ``heron.bench.peers``, so these tests need no peer build)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from heron.bench import targets
from heron.bench.targets import HeronTarget, PeerTarget, gguf_eos_ids, resolve_gguf
from heron.bench.workload import BenchError


def test_gguf_eos_ids(smollm2_path: str) -> None:
    # SmolLM2: eos is <|im_end|> (2); <|endoftext|> (0) ends generation in llama.cpp too.
    assert gguf_eos_ids(Path(smollm2_path)) == (2, 0)


def test_resolve_gguf(smollm2_path: str, tmp_path: Path) -> None:
    assert resolve_gguf("ignored", smollm2_path) == Path(smollm2_path)
    with pytest.raises(BenchError, match="no such file"):
        resolve_gguf("x", str(tmp_path / "missing.gguf"))
    with pytest.raises(BenchError, match="not a GGUF file, an HF checkpoint"):
        resolve_gguf(str(tmp_path / "nothing-here"), None)


def test_heron_command() -> None:
    t = HeronTarget("smollm2", ["--max-num-seqs", "32"])
    cmd = t.command(4242)
    assert cmd[1:] == ["-m", "heron.cli", "serve", "smollm2", "--host", "127.0.0.1", "--port",
                       "4242", "--max-num-seqs", "32"]  # fmt: skip


@dataclass
class FakeProcess:
    base_url: str
    parallel: int
    stopped: bool = False

    def stop(self) -> None:
        self.stopped = True


def fake_peers(started: list[FakeProcess]) -> Any:
    @dataclass
    class PeerSpec:
        kind: str
        model_path: Path
        parallel: int = 1
        ctx_per_slot: int = 1024
        threads: int | None = None

    def start_peer(spec: PeerSpec) -> FakeProcess:
        p = FakeProcess(f"http://127.0.0.1:{9000 + len(started)}", spec.parallel)
        started.append(p)
        return p

    return SimpleNamespace(PEER_KINDS=("llama-server", "llama-cpp-python"), PeerSpec=PeerSpec,
                           PeerError=RuntimeError, start_peer=start_peer)  # fmt: skip


def test_llama_server_restarts_when_slots_change(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[FakeProcess] = []
    monkeypatch.setattr(targets, "load_peers", lambda: fake_peers(started))
    t = PeerTarget("llama-server", Path("m.gguf"), max_slots=16)
    log: list[str] = []
    assert t.prepare(1, log.append) is True
    assert t.prepare(1, log.append) is False  # same -np: keeps running
    assert t.prepare(8, log.append) is True
    assert t.prepare(32, log.append) is True  # capped at 16
    assert t.prepare(64, log.append) is False  # still 16
    assert [p.parallel for p in started] == [1, 8, 16]
    assert [p.stopped for p in started] == [True, True, False]
    assert t.endpoint.url == started[-1].base_url and t.endpoint.api == "openai"
    assert log[-1] == "starting llama-server -np 16"
    t.stop()
    assert started[-1].stopped and t.describe()["parallel_by_start"] == [1, 8, 16]


def test_llama_cpp_python_starts_once(monkeypatch: pytest.MonkeyPatch) -> None:
    started: list[FakeProcess] = []
    monkeypatch.setattr(targets, "load_peers", lambda: fake_peers(started))
    t = PeerTarget("llama-cpp-python", Path("m.gguf"))
    assert [t.prepare(u, print) for u in (1, 8, 64)] == [True, False, False]
    assert len(started) == 1
