"""Real ``heron serve`` processes on free loopback ports; never a mocked engine."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass

import httpx
import pytest

from heron import LLM

MODEL = "smollm2"


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    port: int
    model: str = MODEL
    api_key: str | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def stop(self, timeout: float = 60.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


_SCRATCH: list[str] = []


def _scratch() -> str:
    if not _SCRATCH:
        _SCRATCH.append(tempfile.mkdtemp(prefix="heron-test-"))
    return _SCRATCH[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(
    *args: str,
    env: dict[str, str] | None = None,
    api_key: str | None = None,
    wait: bool = True,
    model: str | None = MODEL,
) -> ServerProcess:
    """``heron serve [model]`` on a free port; ``model=None`` serves the store only."""
    port = free_port()
    named = [model] if model is not None else []
    cmd = [sys.executable, "-m", "heron.cli", "serve", *named, "--port", str(port), *args]
    if api_key:
        cmd += ["--api-key", api_key]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HERON_")}
    # A store of the test run's own, never the user's ~/.heron/models.
    full_env["HERON_MODELS"] = os.path.join(_scratch(), "models")
    full_env.update(env or {})
    proc = subprocess.Popen(cmd, env=full_env)
    server = ServerProcess(proc, port, model=model or "", api_key=api_key)
    if wait:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"heron serve exited with {proc.returncode}")
            with contextlib.suppress(httpx.HTTPError):
                ready = httpx.get(f"{server.base_url}/ready", headers=server.headers(), timeout=2)
                if ready.status_code == 200:
                    return server
            time.sleep(0.5)
        server.stop()
        raise RuntimeError("heron serve did not become ready in time")
    return server


@contextlib.contextmanager
def running_server(*args: str, **kw: object) -> Iterator[ServerProcess]:
    server = start_server(*args, **kw)  # type: ignore[arg-type]
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProcess]:
    with running_server("--kv-cache-memory-mb", "256") as s:
        yield s


@pytest.fixture(scope="session")
def offline_llm() -> LLM:
    return LLM(MODEL, kv_cache_memory_bytes=64 << 20, quantization="auto")
