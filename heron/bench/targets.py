"""Targets: the endpoints of a run, and the servers the run starts itself.

A ``Target`` is asked to ``prepare(users)`` before each level: a fixed endpoint does nothing,
``heron serve`` starts once, llama-server restarts whenever the level needs another slot
count (``-np`` = users, capped), llama-cpp-python starts once. ``prepare`` says whether the
server is fresh, so the run warms it up before measuring. ``stop`` ends whatever was started;
the orchestrator calls it for every target on the way out, Ctrl-C included.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from heron.bench.workload import BenchError, Endpoint

Log = Callable[[str], None]
# The peers ``heron.bench.peers`` can start (its PEER_KINDS); checked here so that argument
# errors need no peer code.
PEER_NAMES = ("llama-server", "llama-cpp-python")


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def load_peers() -> Any:
    """``heron.bench.peers``, imported on demand so that the rest of ``heron bench`` works
    without it."""
    try:
        return importlib.import_module("heron.bench.peers")
    except ImportError as exc:
        raise BenchError(f"peers are not available: {exc}") from None


def resolve_gguf(model: str, model_file: str | None) -> Path:
    """The GGUF file peers load: ``model_file`` if given, else ``model`` resolved as Heron does
    (a path, a model in the store, or a packaged model)."""
    if model_file:
        path = Path(model_file).expanduser()
        if not path.is_file():
            raise BenchError(f"--model-file {model_file}: no such file")
        return path
    from heron.store.resolve import resolve_model

    try:
        path = Path(resolve_model(model))
    except FileNotFoundError as exc:
        raise BenchError(str(exc)) from None
    if not path.is_file():
        raise BenchError(f"model {model!r} is not a GGUF file ({path}); peers need one")
    return path


# Token texts that servers may treat as an end of generation even when the GGUF does not name
# them as eos/eot/eom (llama.cpp does); biasing them too keeps every server generating.
END_TOKEN_TEXTS = frozenset(
    (
        "<|endoftext|>",
        "<|im_end|>",
        "<|eot_id|>",
        "<|end_of_text|>",
        "<|end|>",
        "<end_of_turn>",
        "</s>",
        "<|return|>",
    )
)


def gguf_eos_ids(path: Path) -> tuple[int, ...]:
    """The end-of-generation token ids of a GGUF: the eos, eot and eom ids it declares, then
    the ids of tokens whose text is in ``END_TOKEN_TEXTS``."""
    from heron.loader.gguf import GGUFError, GGUFFile

    try:
        with GGUFFile(path) as g:
            meta = dict(g.metadata)
    except GGUFError as exc:
        raise BenchError(str(exc)) from None
    ids: list[int] = []
    for key in ("eos_token_id", "eot_token_id", "eom_token_id"):
        tid = meta.get(f"tokenizer.ggml.{key}")
        if isinstance(tid, int) and not isinstance(tid, bool) and tid not in ids:
            ids.append(tid)
    tokens = meta.get("tokenizer.ggml.tokens")
    if isinstance(tokens, list):
        ids += [i for i, t in enumerate(tokens) if t in END_TOKEN_TEXTS and i not in ids]
    return tuple(ids)


class Target:
    """An endpoint to measure. ``endpoint`` is valid after ``prepare``."""

    name: str
    endpoint: Endpoint

    def setup(self, log: Log) -> None:
        """Install what the target needs (may take minutes; before any measuring)."""

    def prepare(self, users: int, log: Log) -> bool:
        """Make the endpoint ready for a level of ``users``; True when its server just
        started (it needs a warm-up)."""
        return False

    def stop(self) -> None:
        """Stop whatever this target started; safe to call twice."""

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "url": self.endpoint.url, "api": self.endpoint.api}


class FixedTarget(Target):
    """A server someone else runs."""

    def __init__(self, endpoint: Endpoint) -> None:
        self.name = endpoint.name
        self.endpoint = endpoint


class HeronTarget(Target):
    """``heron serve MODEL`` on a free loopback port, as a child process of the run."""

    def __init__(
        self,
        model: str,
        extra_args: Sequence[str] = (),
        api_key: str | None = None,
        name: str = "heron",
        timeout: float = 600.0,
        log_dir: Path | None = None,
    ) -> None:
        self.name = name
        self.log_dir = log_dir  # where serve's output goes (default: a temporary file)
        self.model = model
        self.extra_args = list(extra_args)
        self.api_key = api_key
        self.timeout = timeout
        self.endpoint = Endpoint(name, "http://127.0.0.1:0")
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    def command(self, port: int) -> list[str]:
        return [
            sys.executable,
            "-m",
            "heron.cli",
            "serve",
            self.model,
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *self.extra_args,
        ]

    def prepare(self, users: int, log: Log) -> bool:
        if self.proc is not None and self.proc.poll() is None:
            return False
        port = free_port()
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            self.log_path = self.log_dir / f"{self.name}-serve.log"
            fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        else:
            fd, log_name = tempfile.mkstemp(prefix="heron-bench-serve-", suffix=".log")
            self.log_path = Path(log_name)
        log(f"starting heron serve {self.model} on port {port} (log {self.log_path})")
        with os.fdopen(fd, "wb") as out:
            # A session of its own: Ctrl-C reaches the run, which stops the server in order.
            self.proc = subprocess.Popen(
                self.command(port), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        self.endpoint = Endpoint(self.name, f"http://127.0.0.1:{port}")
        self._wait_ready()
        return True

    def _wait_ready(self) -> None:
        assert self.proc is not None
        headers = {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}
        deadline = time.monotonic() + self.timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise BenchError(
                    f"heron serve exited with {self.proc.returncode}:\n{self._log_tail()}"
                )
            with contextlib.suppress(httpx.HTTPError):
                url = f"{self.endpoint.url}/ready"
                if httpx.get(url, headers=headers, timeout=2).status_code == 200:
                    return
            time.sleep(0.5)
        self.stop()
        raise BenchError(f"heron serve was not ready in {self.timeout:g} s:\n{self._log_tail()}")

    def _log_tail(self, num_lines: int = 20) -> str:
        if self.log_path is None or not self.log_path.exists():
            return ""
        return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-num_lines:])

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "started": "heron serve",
            "model": self.model,
            "args": self.extra_args,
            "log": str(self.log_path),
        }


class PeerTarget(Target):
    """A peer server (``heron.bench.peers``) on the same GGUF. llama-server gets
    ``-np min(users, max_slots)`` and restarts when a level needs another value."""

    def __init__(
        self,
        kind: str,
        model_path: Path,
        max_slots: int = 64,
        ctx_per_slot: int = 1024,
        threads: int | None = None,
    ) -> None:
        self.name = kind
        self.kind = kind
        self.model_path = model_path
        self.max_slots = max_slots
        self.ctx_per_slot = ctx_per_slot
        self.threads = threads
        self.endpoint = Endpoint(kind, "http://127.0.0.1:0")
        self.process: Any = None
        self.parallel: int | None = None
        self.history: list[int] = []  # -np of every start

    def setup(self, log: Log) -> None:
        peers = load_peers()
        if self.kind not in peers.PEER_KINDS:
            raise BenchError(f"unknown peer {self.kind!r}; choose one of {peers.PEER_KINDS}")
        log(f"making sure {self.kind} is installed (the first time builds it)")
        peers.ensure_peer(self.kind, progress=log)

    def prepare(self, users: int, log: Log) -> bool:
        parallel = min(users, self.max_slots) if self.kind == "llama-server" else 1
        if self.process is not None and parallel == self.parallel:
            return False
        self.stop()
        peers = load_peers()
        spec = peers.PeerSpec(
            kind=self.kind,
            model_path=self.model_path,
            parallel=parallel,
            ctx_per_slot=self.ctx_per_slot,
            threads=self.threads,
        )
        log(f"starting {self.kind}" + (f" -np {parallel}" if self.kind == "llama-server" else ""))
        try:
            self.process = peers.start_peer(spec)
        except (peers.PeerError, ValueError) as exc:
            raise BenchError(f"{self.kind} failed to start: {exc}") from None
        self.parallel = parallel
        self.history.append(parallel)
        self.endpoint = Endpoint(self.name, str(self.process.base_url))
        return True

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None:
            process.stop()

    def describe(self) -> dict[str, Any]:
        return {
            **super().describe(),
            "started": self.kind,
            "model_path": str(self.model_path),
            "max_slots": self.max_slots,
            "ctx_per_slot": self.ctx_per_slot,
            "threads": self.threads,
            "parallel_by_start": self.history,
        }
