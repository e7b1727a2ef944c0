"""``kill -9`` of the command line model's engine process: requests in flight get a clear
error, /ready answers 503 while a new engine loads, and new requests are served after."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import ServerProcess, running_server

pytestmark = pytest.mark.slow

LONG = {
    "model": "smollm2",
    "messages": [{"role": "user", "content": "Write a long story about a lighthouse."}],
    "max_tokens": 400,
    "ignore_eos": True,
    "stream": True,
}


def _engine_pid(server: ServerProcess) -> int | None:
    """The engine-core process: the server's child started by multiprocessing's spawn."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == server.proc.pid and b"spawn_main" in cmdline:
            return int(entry.name)
    return None


def test_killed_engine_restarts_and_the_server_stays_up() -> None:
    with running_server("--kv-cache-memory-mb", "64") as s:
        first = _engine_pid(s)
        assert first is not None
        events: list[str] = []
        started = threading.Event()

        def stream() -> None:
            with httpx.stream(
                "POST", f"{s.base_url}/v1/chat/completions", json=LONG, timeout=60
            ) as r:
                for line in r.iter_lines():
                    if line.startswith("data: "):
                        events.append(line[6:])
                        started.set()

        reader = threading.Thread(target=stream, daemon=True)
        reader.start()
        assert started.wait(60)
        os.kill(first, signal.SIGKILL)
        reader.join(60)
        assert not reader.is_alive()
        # The request in flight ends with an error event, not a hang or a cut connection.
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])
        assert "error" in error and "engine" in error["error"]["message"]

        assert s.proc.poll() is None, "the server exited"
        deadline = time.monotonic() + 120
        codes = []
        while time.monotonic() < deadline:
            code = httpx.get(f"{s.base_url}/ready", timeout=5).status_code
            codes.append(code)
            if code == 200:
                break
            time.sleep(0.2)
        assert codes[-1] == 200 and 503 in codes, codes  # not ready while it reloads
        second = _engine_pid(s)
        assert second is not None and second != first
        body = {**LONG, "stream": False, "max_tokens": 4}
        ok = httpx.post(f"{s.base_url}/v1/chat/completions", json=body, timeout=60)
        assert ok.status_code == 200 and ok.json()["usage"]["completion_tokens"] == 4
