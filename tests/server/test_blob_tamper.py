"""Checks before a stored model loads: a blob changed after it was verified is found (the
error names the model and the repair), and a stored TEMPLATE that does not parse is a 400."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from heron.config import EngineConfig
from heron.server.common import APIError
from heron.server.model_manager import ModelManager
from heron.store import ModelStore, parse_modelfile
from tests.store.conftest import write_tiny_gguf


class _WouldLoad(Exception):
    pass


def _manager(store: ModelStore, monkeypatch: pytest.MonkeyPatch) -> ModelManager:
    def start(self: ModelManager, spec: Any, pinned: bool) -> Any:
        raise _WouldLoad(spec.name)

    monkeypatch.setattr(ModelManager, "_start", start)
    return ModelManager(EngineConfig(), store)


def _stored(tmp_path: Path) -> tuple[ModelStore, Path]:
    store = ModelStore(tmp_path / "models")
    (tmp_path / "src").mkdir()
    gguf = write_tiny_gguf(tmp_path / "src" / "model.gguf")
    for _ in store.create("tiny", parse_modelfile(f"FROM {gguf}\n"), base_dir=gguf.parent):
        pass
    stored = store.get("tiny")
    return store, store.blobs.path(
        stored.manifest.find("application/vnd.ollama.image.model")[0].digest
    )


def test_intact_model_goes_on_to_load(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store, _ = _stored(tmp_path)
    with pytest.raises(_WouldLoad):
        asyncio.run(_manager(store, monkeypatch).get("tiny"))


def test_flipped_byte_is_a_clear_error_before_loading(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store, blob = _stored(tmp_path)
    size = blob.stat().st_size
    blob.chmod(0o644)
    with blob.open("r+b") as f:  # a byte near the end: tensor data, not the header
        f.seek(size - 3)
        byte = f.read(1)
        f.seek(size - 3)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(APIError) as err:
        asyncio.run(_manager(store, monkeypatch).get("tiny"))
    message = str(err.value)
    assert "tiny" in message and "heron pull tiny" in message and "corrupt" in message


def test_stored_broken_template_is_a_400_not_a_load_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A model stored before create checked templates (or by another tool) with a TEMPLATE
    that does not parse: a 400 naming the problem, before any engine starts."""
    import heron.store.create as create

    monkeypatch.setattr(create, "check_modelfile_template", lambda template: None)
    store = ModelStore(tmp_path / "models")
    (tmp_path / "src").mkdir()
    gguf = write_tiny_gguf(tmp_path / "src" / "model.gguf")
    nested = "{{ if .System }}" * 150 + "x" + "{{ end }}" * 150
    text = f'FROM {gguf}\nTEMPLATE """{nested}"""\n'
    for _ in store.create("tiny", parse_modelfile(text), base_dir=gguf.parent):
        pass
    with pytest.raises(APIError) as err:
        asyncio.run(_manager(store, monkeypatch).get("tiny"))
    assert err.value.status == 400
    assert "TEMPLATE" in str(err.value) and "nesting deeper than 100" in str(err.value)
