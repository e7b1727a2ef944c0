"""The commands the Helm chart puts in the pod (the readiness probe, the pull init container's
script), rendered and then run as written against a real `heron serve` on 127.0.0.1."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx

from tests.deploy.chart import Manifest, one, render
from tests.server.conftest import free_port, running_server


def pod_spec(values: dict[str, Any]) -> Manifest:
    spec: Manifest = one(render(values), "Deployment")["spec"]["template"]["spec"]
    return spec


def test_the_readiness_probe_asks_a_real_server_with_the_key() -> None:
    with running_server(model=None, api_key="k-chart") as server:
        server_spec = pod_spec({"containerPort": server.port})["containers"][0]
        command = server_spec["readinessProbe"]["exec"]["command"]
        assert command[0] == "python"
        probe = [sys.executable, *command[1:]]
        env = {k: v for k, v in os.environ.items() if not k.startswith("HERON_")}
        assert subprocess.run(probe, env=env | {"HERON_API_KEY": "k-chart"}).returncode == 0
        refused = subprocess.run(probe, env=env | {"HERON_API_KEY": "wrong"}, capture_output=True)
        assert refused.returncode != 0 and b"401" in refused.stderr
        # The liveness and startup probes send no key: /health must not need one.
        path = server_spec["livenessProbe"]["httpGet"]["path"]
        assert httpx.get(f"{server.base_url}{path}", timeout=5).status_code == 200


def test_the_pull_init_container_fails_on_a_model_it_cannot_pull(tmp_path: Path) -> None:
    """The init container's script, run as written: it starts a loopback server, the pull of a
    name the catalog does not know fails, and the script exits non-zero with that server gone."""
    init = pod_spec({"model": {"name": "no-such-model-xyz"}})["initContainers"][0]
    shell, flag, script = init["command"]
    port = free_port()
    script = script.replace("127.0.0.1:11435", f"127.0.0.1:{port}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERON_")}
    env |= {e["name"]: e["value"] for e in init["env"] if "value" in e}
    env |= {
        "HERON_API_KEY": "k-chart",
        "HERON_MODELS": str(tmp_path / "models"),
        "TMPDIR": str(tmp_path),
    }
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    done = subprocess.run([shell, flag, script], env=env, capture_output=True, timeout=180)
    assert done.returncode != 0
    assert b"no-such-model-xyz" in done.stderr, done.stderr
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))  # the loopback server let go of its port
