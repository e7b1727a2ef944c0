"""``RayReplicas.start`` on a real two-node cluster (tests/ray/conftest.py) refuses to serve
when a replica's node does not hold the model as the server sees it, naming the node and the
file and saying how to fix it, and releases what it placed. It runs in a child process, as
``heron serve`` would: Ray reads its authentication settings once per process."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="Ray is not installed (pip install 'heron[ray]')")

pytestmark = pytest.mark.slow

CODE = """
import os, sys
import ray
from heron.ray import placement

address, model = sys.argv[1:]
# The server sees one byte more than the nodes have: a stale or partial copy there.
placement.model_files = lambda path: {"": os.path.getsize(path) + 1}
try:
    placement.RayReplicas.start(placement.RayPlacement(address, size=2, ready_timeout_s=60), model)
except ValueError as exc:
    print(exc)
else:
    sys.exit("started")
assert not ray.is_initialized(), "still in the cluster"
# Its bundles were released: the whole cluster can be placed again.
ray.init(address=address, logging_level="WARNING")
group = ray.util.placement_group([{"CPU": 1.0}] * 2, strategy="SPREAD")
ready, _ = ray.wait([group.ready()], timeout=30)
assert ready, "the bundles were not released"
ray.shutdown()
"""


def test_a_node_without_the_model_stops_the_start(
    ray_cluster: tuple[str, dict[str, str]], tmp_path: Path
) -> None:
    address, env = ray_cluster
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF" + bytes(60))
    out = subprocess.run(
        [sys.executable, "-c", CODE, address, str(model)],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    message = out.stdout
    assert "replica 0: node 127.0.0." in message and "replica 1: node 127.0.0." in message
    assert f"{model} has 64 bytes here but 65 on the server" in message
    assert "heron pull" in message and "HERON_MODELS" in message
