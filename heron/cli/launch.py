"""A local ``heron serve`` for ``heron run`` when none answers at ``HERON_HOST``: started as a
child process on that address with the same environment, and stopped when ``run`` exits."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from types import FrameType
from typing import IO

import httpx

from heron import env
from heron.cli.client import Client, CLIError

START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 30.0
_LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0", "::", ""})


def _log_tail(log: IO[bytes], num_lines: int = 15) -> str:
    log.seek(0)
    lines = log.read().decode("utf-8", "replace").splitlines()
    return "\n".join(lines[-num_lines:])


class LocalServer:
    """A ``heron serve`` child; its output goes to a temporary log, shown if it fails."""

    def __init__(self, client: Client, model: str | None = None) -> None:
        """``model``: a stored model the server loads as it starts (not while it waits for
        the first request), which is most of a cold ``heron run``'s wait."""
        self.client = client
        host, port = env.split_host_port(env.host())
        self.log = tempfile.TemporaryFile()
        cmd = [sys.executable, "-m", "heron.cli", "serve", "--host", host or "127.0.0.1"]
        cmd += ["--port", str(port)]
        if model is not None:
            cmd.append(model)
        # A session of its own: Ctrl-C in the terminal interrupts run, not the server.
        self.proc = subprocess.Popen(
            cmd,
            env=dict(os.environ),
            stdin=subprocess.DEVNULL,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_healthy(self, timeout: float = START_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise CLIError(
                    f"the Heron server started for `run` exited with {self.proc.returncode}:\n"
                    + _log_tail(self.log)
                )
            with contextlib.suppress(httpx.TransportError):
                if self.client.http.get("/health", timeout=2.0).status_code == 200:
                    return
            time.sleep(0.2)
        tail = _log_tail(self.log)
        self.stop()
        raise CLIError(
            f"the Heron server started for `run` did not answer at {self.client.base_url} "
            f"within {timeout:.0f} s:\n" + tail
        )

    def stop(self) -> None:
        """SIGTERM (the server drains), then SIGKILL if it takes too long or if another signal
        interrupts the wait."""
        try:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
                try:
                    self.proc.wait(STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                except BaseException:  # SystemExit (SIGTERM) or Ctrl-C during the wait
                    self.proc.kill()
                    raise
                finally:
                    self.proc.wait()
        finally:
            self.log.close()


def _raise_exit(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)


def stored_model(name: str) -> str | None:
    """``name`` when the local store holds a model of that name, else None (not stored, or
    not a valid name: the server then says why)."""
    from heron.store.store import ModelStore

    try:
        ModelStore(None).get(name)
    except Exception:  # InvalidNameError, ModelNotFoundError, ManifestError, OSError
        return None
    return name


@contextlib.contextmanager
def ensure_server(client: Client, model: str | None = None) -> Iterator[LocalServer | None]:
    """Yield None when a server answers at the client's address; otherwise start a local one
    (only for a loopback or unspecified host), loading ``model`` at once if it is stored,
    yield it, and stop it on the way out, also on SIGTERM or SIGHUP."""
    if client.is_running():
        yield None
        return
    host, _ = env.split_host_port(env.host())
    if host.lower() not in _LOCAL_HOSTS:
        raise client.not_running()
    print(
        f"Starting a Heron server at {client.base_url} (it stops when this command exits)",
        file=sys.stderr,
        flush=True,
    )
    server = LocalServer(client, stored_model(model) if model is not None else None)
    previous = {sig: signal.signal(sig, _raise_exit) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        server.wait_healthy()
        yield server
    finally:
        server.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)
