from __future__ import annotations

import io
import json
import os
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from heron.bench import peers
from heron.bench.peers import (
    LLAMA_CPP_PYTHON_VERSION,
    PeerError,
    PeerSpec,
    cache_dir,
    install_atomically,
    peer_argv,
    peer_executable,
    start_peer,
)

# A stand-in peer that answers 200 on either peer's readiness path.
FAKE_SERVER = """\
import http.server, sys
port = int(sys.argv[sys.argv.index("--port") + 1])

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(200 if self.path in ("/health", "/v1/models") else 404)
        self.end_headers()
        self.wfile.write(b"{}")

http.server.HTTPServer(("127.0.0.1", port), Handler).serve_forever()
"""


def _script(path: Path, body: str) -> Path:
    path.write_text(body)
    path.chmod(0o755)
    return path


@pytest.fixture
def model(tmp_path: Path) -> Path:
    path = tmp_path / "model.gguf"
    path.write_bytes(b"GGUF")
    return path


def test_cache_dir_honours_heron_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HERON_CACHE", str(tmp_path))
    assert cache_dir() == tmp_path / "peers"
    version = LLAMA_CPP_PYTHON_VERSION
    assert peer_executable("llama-server") == (
        tmp_path / "peers" / f"llama-server-{version}" / "bin" / "llama-server"
    )
    assert peer_executable("llama-cpp-python") == (
        tmp_path / "peers" / f"llama-cpp-python-{version}" / "venv" / "bin" / "python"
    )


def test_cache_dir_default(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HERON_CACHE", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_dir() == tmp_path / ".cache" / "heron" / "peers"


def test_spec_validates() -> None:
    with pytest.raises(ValueError, match="unknown peer"):
        PeerSpec("ollama", Path("m.gguf"))
    with pytest.raises(ValueError):
        PeerSpec("llama-server", Path("m.gguf"), parallel=0)
    with pytest.raises(ValueError, match="unknown peer"):
        peers.ensure_peer("vllm")


def test_llama_server_argv() -> None:
    spec = PeerSpec("llama-server", Path("/m.gguf"), parallel=16, ctx_per_slot=512, threads=2)
    argv = peer_argv(spec, Path("/bin/llama-server"), 8080)
    assert argv[0] == "/bin/llama-server"
    text = " ".join(argv)
    assert "-m /m.gguf" in text
    assert "--host 127.0.0.1 --port 8080" in text
    assert "-np 16 -c 8192" in text  # one context per slot
    assert "-t 2 -tb 2" in text


def test_llama_cpp_python_argv(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "cpu_count", lambda: 3)
    spec = PeerSpec("llama-cpp-python", Path("/m.gguf"), parallel=16)
    argv = peer_argv(spec, Path("/venv/bin/python"), 9000)
    assert argv[:3] == ["/venv/bin/python", "-m", "llama_cpp.server"]
    text = " ".join(argv)
    assert "--model /m.gguf --host 127.0.0.1 --port 9000" in text
    assert "--n_ctx 2048" in text
    assert "--n_threads 3 --n_threads_batch 3" in text
    assert "--interrupt_requests False" in text  # FIFO: a new request must not cancel the last


def test_start_peer_raises_with_output_of_a_peer_that_exits(tmp_path: Path, model: Path) -> None:
    exe = _script(tmp_path / "peer", "#!/bin/sh\necho 'error: cannot load model' >&2\nexit 3\n")
    with pytest.raises(PeerError, match=r"(?s)exited with code 3.*cannot load model"):
        start_peer(PeerSpec("llama-server", model), executable=exe, timeout=10)


def test_start_peer_times_out(tmp_path: Path, model: Path) -> None:
    exe = _script(tmp_path / "peer", "#!/bin/sh\necho loading\nexec sleep 30\n")
    started = time.monotonic()
    with pytest.raises(PeerError, match=r"(?s)not ready.*loading"):
        start_peer(PeerSpec("llama-server", model), executable=exe, timeout=0.5)
    assert time.monotonic() - started < 10  # stopped, not waited for


def test_start_peer_missing_model_or_executable(tmp_path: Path, model: Path) -> None:
    with pytest.raises(PeerError, match="model file not found"):
        start_peer(PeerSpec("llama-server", tmp_path / "no.gguf"), executable=Path("/bin/true"))
    with pytest.raises(PeerError, match="cannot run"):
        start_peer(PeerSpec("llama-server", model), executable=tmp_path / "no-such-peer")


@pytest.mark.parametrize("kind", peers.PEER_KINDS)
def test_start_peer_waits_until_ready_and_stops(tmp_path: Path, model: Path, kind: str) -> None:
    exe = _script(tmp_path / "peer", f"#!{sys.executable}\n{FAKE_SERVER}")
    spec = PeerSpec(kind, model)
    # The llama-cpp-python command line starts with "-m llama_cpp.server": run the script as is.
    with start_peer(spec, executable=exe, timeout=20) as peer:
        assert peer.proc.poll() is None
        ready = "/health" if kind == "llama-server" else "/v1/models"
        assert httpx.get(peer.base_url + ready).status_code == 200
    assert peer.proc.poll() is not None
    assert not peer.log_path.exists()
    peer.stop()  # idempotent


def _fake_build(calls: list[str], delay: float = 0.0) -> Callable[[Path, peers.Progress], None]:
    def build(dest: Path, progress: peers.Progress) -> None:
        calls.append(dest.name)
        progress("building")
        time.sleep(delay)
        (dest / "bin").mkdir()
        _script(dest / "bin" / "tool", "#!/bin/sh\n")

    return build


def _no_check(executable: Path) -> None:
    assert executable.exists()


def test_install_builds_once_then_reuses(tmp_path: Path) -> None:
    calls: list[str] = []
    messages: list[str] = []
    final = tmp_path / "tool-1"
    exe = install_atomically(
        final, Path("bin/tool"), _fake_build(calls), _no_check, messages.append
    )
    assert exe == final / "bin" / "tool" and exe.exists()
    assert install_atomically(final, Path("bin/tool"), _fake_build(calls), _no_check) == exe
    assert len(calls) == 1 and calls[0].startswith(".tool-1.tmp-")
    assert "building" in messages
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tool-1", "tool-1.lock"]


def test_failed_build_or_check_leaves_nothing(tmp_path: Path) -> None:
    final = tmp_path / "tool-1"

    def broken(dest: Path, progress: peers.Progress) -> None:
        (dest / "half-built").write_text("x")
        peers._run(
            ["sh", "-c", "echo compiling; echo compiler crashed; exit 2"], dest / "build.log"
        )

    with pytest.raises(PeerError, match=r"(?s)exit code 2:\ncompiling\ncompiler crashed\nfull log"):
        install_atomically(final, Path("bin/tool"), broken, _no_check)
    assert "compiler crashed" in (tmp_path / "tool-1.failed.log").read_text()
    (tmp_path / "tool-1.failed.log").unlink()

    def failing_check(executable: Path) -> None:
        raise PeerError("does not run")

    with pytest.raises(PeerError, match="does not run"):
        install_atomically(final, Path("bin/tool"), _fake_build([]), failing_check)
    assert [p.name for p in tmp_path.iterdir()] == ["tool-1.lock"]


def test_install_cleans_up_after_a_dead_builder(tmp_path: Path) -> None:
    final = tmp_path / "tool-1"
    (tmp_path / ".tool-1.tmp-99999").mkdir()  # killed mid-build
    final.mkdir()  # complete installs always have the executable; this one does not
    calls: list[str] = []
    install_atomically(final, Path("bin/tool"), _fake_build(calls), _no_check)
    assert len(calls) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tool-1", "tool-1.lock"]


def test_concurrent_installs_build_once(tmp_path: Path) -> None:
    calls: list[str] = []
    messages: list[str] = []
    final = tmp_path / "tool-1"
    results: list[Path] = []

    def install() -> None:
        build = _fake_build(calls, delay=0.5)
        results.append(
            install_atomically(final, Path("bin/tool"), build, _no_check, messages.append)
        )

    threads = [threading.Thread(target=install) for _ in range(2)]
    for t in threads:
        t.start()
        time.sleep(0.1)
    for t in threads:
        t.join()
    assert len(calls) == 1
    assert results == [final / "bin" / "tool"] * 2
    assert any(m.startswith("waiting for another process") for m in messages)


def test_extract_takes_only_vendored_llama_cpp(tmp_path: Path) -> None:
    root = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}"
    files = {
        f"{root}/setup.py": b"x",
        f"{root}/.git/modules/vendor/llama.cpp/HEAD": b"abc1\n",
        f"{root}/vendor/llama.cpp/.git": b"gitdir: ../../.git/modules/vendor/llama.cpp",
        f"{root}/vendor/llama.cpp/CMakeLists.txt": b"x",
        f"{root}/vendor/llama.cpp/tools/server/main.cpp": b"x",
    }
    sdist = tmp_path / "sdist.tar.gz"
    with tarfile.open(sdist, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    peers._extract_llama_cpp(sdist, tmp_path / "src")
    found = sorted(str(p.relative_to(tmp_path / "src")) for p in (tmp_path / "src").rglob("*"))
    assert found == ["CMakeLists.txt", "tools", "tools/server", "tools/server/main.cpp"]
    peers._write_provenance(tmp_path, sdist, {})
    assert json.loads((tmp_path / "peer.json").read_text())["llama_cpp_commit"] == "abc1"


def test_build_progress_from_make_and_ninja() -> None:
    messages: list[str] = []
    on_line = peers._percent_reporter(messages.append)
    for line in [
        "-- configuring",
        "[  0%] a",
        "[  3%] b",
        "[  3%] c",
        "  [40/80] ninja under pip",
        "x",
    ]:
        on_line(line)
    assert messages == ["building 3%", "building 50%"]


@pytest.mark.slow
@pytest.mark.parametrize("kind", peers.PEER_KINDS)
def test_real_peer_answers_a_chat(kind: str, smollm2_path: str) -> None:
    if not peer_executable(kind).exists():
        pytest.skip(f"{kind} is not in the peer cache ({cache_dir()}); tests never build it")
    with start_peer(PeerSpec(kind, Path(smollm2_path), parallel=2), timeout=120) as peer:
        body = {"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 8}
        r = httpx.post(peer.base_url + "/v1/chat/completions", json=body, timeout=60)
        assert r.status_code == 200, r.text
        reply = r.json()
        assert reply["choices"][0]["message"]["content"], json.dumps(reply)
        assert 0 < reply["usage"]["completion_tokens"] <= 8
