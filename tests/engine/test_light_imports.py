"""The HTTP process never imports torch: it reads a checkpoint's header, builds the
tokenizer and starts the engine process while that process imports torch (a cold start
overlaps the two)."""

from __future__ import annotations

import subprocess
import sys

CODE = """
import importlib, pkgutil, sys
import heron.cli.main, heron.server, heron.engine.core_client
for module in pkgutil.walk_packages(heron.server.__path__, "heron.server."):
    importlib.import_module(module.name)  # every route, loaded at startup or first request
from heron.loader import load_checkpoint
from heron.packaged import find_packaged_model
from heron.prompt import ChatRenderer
from heron.tokenizer import Tokenizer
from heron.kvcache.plan import plan_max_model_len
from heron.config import EngineConfig

checkpoint = load_checkpoint(find_packaged_model())
tokenizer = Tokenizer.from_checkpoint(checkpoint)
ChatRenderer(tokenizer, None)
plan_max_model_len(checkpoint.config, EngineConfig())
heavy = sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))
print(heavy[:5])
"""


def test_the_http_process_never_imports_torch() -> None:
    out = subprocess.run([sys.executable, "-c", CODE], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
