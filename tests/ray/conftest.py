"""A local two-node Ray cluster on loopback for the tests that need one (a module each)."""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.server.conftest import free_port

# Ray turns a node address of 127.0.0.1 into the machine's outward IP; 127.0.0.2 is kept, so
# the head is 127.0.0.2 and the worker (seen from there) 127.0.0.1: all of it on loopback.
HEAD = "127.0.0.2"


def _ray_start(args: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """``ray start ... --block`` in its own process group: killing the group ends every
    process of that node (GCS, raylet, workers) and nothing else."""
    ray = str(Path(sys.executable).with_name("ray"))
    with log.open("wb") as out:
        return subprocess.Popen(
            [ray, "start", "--block", "--num-cpus=1", *args],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


@pytest.fixture(scope="module")
def ray_cluster() -> Iterator[tuple[str, dict[str, str]]]:
    """(address, environment) of a head and a worker; torn down after the module."""
    # Ray's Unix sockets live under the temp dir: keep its path short.
    temp = tempfile.mkdtemp(prefix="hr-", dir="/tmp")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env |= {
        "RAY_AUTH_MODE": "token",  # as docs/scale-out.md sets it up
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
        # Actors take the environment of their node's `ray start`. Torch ops only: this is
        # about placement and restarts, and a checkout whose kernel sources are newer than
        # the installed build would compile them in each actor first.
        "HERON_KERNELS": "0",
    }
    head_args = [
        "--head",
        f"--port={port}",
        f"--node-ip-address={HEAD}",
        "--include-dashboard=false",
        "--disable-usage-stats",
        f"--temp-dir={temp}",
    ]
    nodes = [_ray_start(head_args, env, Path(temp) / "head.log")]
    try:
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(OSError):
                socket.create_connection((HEAD, port), timeout=1).close()
                break
            assert nodes[0].poll() is None, (Path(temp) / "head.log").read_text()
            assert time.monotonic() < deadline, "the Ray head did not start"
            time.sleep(0.2)
        worker_args = [f"--address={HEAD}:{port}"]
        nodes.append(_ray_start(worker_args, env, Path(temp) / "worker.log"))
        yield f"{HEAD}:{port}", env
    finally:
        for node in nodes:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(node.pid, signal.SIGKILL)
        for node in nodes:
            node.wait(30)
        shutil.rmtree(temp, ignore_errors=True)
