"""The HTTP process imports Ray only when asked (``--ray-address``): a server without it
loads none of Ray's modules, nor the parts of heron.ray that import it."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import importlib, pkgutil, sys
import heron.cli.main, heron.server, heron.engine.dp_client, heron.ray.launch
for module in pkgutil.walk_packages(heron.server.__path__, "heron.server."):
    importlib.import_module(module.name)
print(sorted(m for m in sys.modules if m == "ray" or m.startswith(("ray.", "heron.ray."))))
"""


def test_serving_without_ray_address_never_imports_ray() -> None:
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['heron.ray.launch']"
