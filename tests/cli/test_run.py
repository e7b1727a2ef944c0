"""``heron run`` one-shot: from the argument, from stdin, ``--verbose``, and starting a server
of its own when none answers."""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path

import pytest

from tests.cli.conftest import MAX_TOKENS, Heron, cli_env
from tests.server.conftest import free_port

STATS = (
    "total duration:",
    "load duration:",
    "prompt eval count:",
    "prompt eval duration:",
    "prompt eval rate:",
    "eval count:",
    "eval duration:",
    "eval rate:",
    "time to first token:",
)


def eval_count(stderr: str) -> int:
    match = re.search(r"^eval count:\s+(\d+) token\(s\)$", stderr, re.M)
    assert match, stderr
    return int(match.group(1))


def prompt_eval_count(stderr: str) -> int:
    match = re.search(r"^prompt eval count:\s+(\d+) token\(s\)$", stderr, re.M)
    assert match, stderr
    return int(match.group(1))


def test_one_shot(heron: Heron) -> None:
    r = heron("run", "smollm2", "Why is the sky blue?")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() and r.stdout.endswith("\n")
    assert "eval count" not in r.stderr


def test_one_shot_words_and_verbose(heron: Heron) -> None:
    r = heron("run", "smollm2", "Name", "a", "colour.", "--verbose", "--keepalive", "10m")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()
    lines = r.stderr.splitlines()
    for label in STATS:
        assert any(line.startswith(label) for line in lines), (label, r.stderr)
    assert 1 <= eval_count(r.stderr) <= MAX_TOKENS
    assert re.search(r"^eval rate:\s+\d+\.\d\d tokens/s$", r.stderr, re.M)


def test_stdin_prompt(heron: Heron) -> None:
    r = heron("run", "smollm2", "--verbose", input="Why is the sky blue?\n")
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip()
    alone = prompt_eval_count(r.stderr)
    # the argument and stdin together: one prompt, longer than stdin alone
    r = heron("run", "smollm2", "Summarise this:", "--verbose", input="Why is the sky blue?\n")
    assert r.returncode == 0, r.stderr
    assert prompt_eval_count(r.stderr) > alone


def test_bad_keepalive_is_a_clean_error(heron: Heron) -> None:
    r = heron("run", "smollm2", "hi", "--keepalive", "soon")
    assert r.returncode == 1
    assert r.stderr.startswith("Error: ") and "Traceback" not in r.stderr


def _listening(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _serve_processes(port: int) -> list[int]:
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"heron.cli" in cmdline and b"serve" in cmdline and str(port).encode() in cmdline:
            found.append(int(pid))
    return found


def test_run_starts_and_stops_a_local_server(
    heron: Heron, pirate: str, models_dir: Path, tmp_path: Path
) -> None:
    # A short model in the shared store, made through the session's server, so that the
    # server `run` starts (same HERON_MODELS) answers quickly.
    (tmp_path / "Modelfile").write_text("FROM pirate\nPARAMETER num_predict 4\n")
    r = heron("create", "pirate-short", "-f", str(tmp_path / "Modelfile"))
    assert r.returncode == 0, r.stderr
    port = free_port()
    env = cli_env(port, models_dir)
    local = Heron(env)
    r = local("run", "pirate-short", "Say hello.", "--verbose", timeout=400)
    assert r.returncode == 0, r.stderr
    assert f"Starting a Heron server at http://127.0.0.1:{port}" in r.stderr
    assert r.stdout.strip()
    assert eval_count(r.stderr) == 4
    assert not _listening(port)
    assert _serve_processes(port) == []


def test_run_loads_a_stored_model_as_its_server_starts(
    pirate: str, models_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server `run` starts is told the model (so it loads while the server starts) only
    when the store holds it; otherwise the server starts bare and `run` pulls."""
    from heron.cli.launch import stored_model

    monkeypatch.setenv("HERON_MODELS", str(models_dir))
    assert pirate  # the fixture's `heron create pirate` output: the model is stored
    assert stored_model("pirate") == "pirate"
    assert stored_model("not-pulled-here") is None
    assert stored_model("../../etc/passwd") is None
