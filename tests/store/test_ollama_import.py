"""Import from a synthetic Ollama store: verified, hard-linked, tampered blobs refused."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest

from heron.store import ModelStore
from heron.store.manifest import (
    MEDIA_CONFIG,
    MEDIA_MODEL,
    MEDIA_TEMPLATE,
    Layer,
    Manifest,
)
from heron.store.ollama_import import OllamaImportError, import_ollama


class FakeOllama:
    """``manifests/`` and ``blobs/`` laid out as Ollama writes them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        (root / "blobs").mkdir(parents=True)
        (root / "manifests").mkdir()

    def blob(self, data: bytes, media_type: str) -> Layer:
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        (self.root / "blobs" / ("sha256-" + digest[7:])).write_bytes(data)
        return Layer(media_type, digest, len(data))

    def model(self, parts: tuple[str, str, str, str], weights: bytes, template: str) -> Manifest:
        config = self.blob(
            json.dumps({"model_format": "gguf", "model_family": "llama"}).encode(), MEDIA_CONFIG
        )
        manifest = Manifest(
            config, (self.blob(weights, MEDIA_MODEL), self.blob(template.encode(), MEDIA_TEMPLATE))
        )
        path = self.root.joinpath("manifests", *parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        body = json.loads(manifest.to_json())
        body["layers"][0]["from"] = "/usr/share/ollama/.ollama/models/blobs/x"  # Ollama writes it
        path.write_text(json.dumps(body, indent=2))
        return manifest

    def tamper(self, digest: str) -> None:
        path = self.root / "blobs" / ("sha256-" + digest[7:])
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0x01
        path.write_bytes(bytes(data))


@pytest.fixture
def ollama(tmp_path: Path, tiny_gguf: Callable[..., Path]) -> FakeOllama:
    fake = FakeOllama(tmp_path / "ollama")
    fake.model(("registry.ollama.ai", "library", "tiny", "latest"), tiny_gguf().read_bytes(), "T1")
    fake.model(("hf.co", "Org", "Repo", "Q4_K_M"), tiny_gguf("b.gguf", seed=2).read_bytes(), "T2")
    return fake


def test_import_hardlinks_with_short_names(store: ModelStore, ollama: FakeOllama) -> None:
    imported = import_ollama(store, ollama.root)
    assert imported == ["hf.co/org/repo:q4_k_m", "tiny:latest"]
    m = store.get("tiny")
    assert m.format == "gguf" and m.family == "llama" and m.template == "T1"
    for digest in m.manifest.digests():
        src = ollama.root / "blobs" / ("sha256-" + digest[7:])
        assert store.blobs.path(digest).stat().st_ino == src.stat().st_ino  # no copy
    assert store.verify("tiny") == []
    assert store.get("hf.co/org/repo:q4_k_m").template == "T2"
    assert import_ollama(store, ollama.root) == imported  # idempotent


def test_only_the_named_models(store: ModelStore, ollama: FakeOllama) -> None:
    assert import_ollama(store, ollama.root, names=["tiny"]) == ["tiny:latest"]
    assert [m.name.display for m in store.list()] == ["tiny:latest"]
    with pytest.raises(OllamaImportError, match="not found"):
        import_ollama(store, ollama.root, names=["absent"])


def test_tampered_blob_refuses_that_model_only(
    store: ModelStore, ollama: FakeOllama, tiny_gguf: Callable[..., Path]
) -> None:
    bad = ollama.model(
        ("registry.ollama.ai", "library", "bad", "latest"),
        tiny_gguf("c.gguf", seed=3).read_bytes(),
        "T3",
    )
    ollama.tamper(bad.find(MEDIA_MODEL)[0].digest)
    with pytest.raises(OllamaImportError) as info:
        import_ollama(store, ollama.root)
    assert list(info.value.errors) == ["registry.ollama.ai/library/bad:latest"]
    assert "expected" in info.value.errors["registry.ollama.ai/library/bad:latest"]
    assert info.value.imported == [
        "hf.co/org/repo:q4_k_m",
        "tiny:latest",
    ]
    names = [m.name.display for m in store.list()]
    assert "bad:latest" not in names and len(names) == 2
    # nothing of the bad model was left behind (its template blob was unique to it)
    assert not store.blobs.has(bad.find(MEDIA_TEMPLATE)[0].digest)
    assert not store.blobs.has(bad.find(MEDIA_MODEL)[0].digest)
    errors: list[str] = []
    import_ollama(store, ollama.root, on_error=lambda name, exc: errors.append(name))
    assert errors == ["registry.ollama.ai/library/bad:latest"]


def test_walk_never_leaves_the_ollama_root(
    store: ModelStore, ollama: FakeOllama, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    (outside / "m").mkdir(parents=True)
    good = next((ollama.root / "manifests").rglob("latest")).read_bytes()
    (outside / "m" / "latest").write_bytes(good)
    (ollama.root / "manifests" / "registry.ollama.ai" / "evil").symlink_to(outside)
    secret = tmp_path / "secret"
    secret.write_bytes(b"secret")
    manifest = Manifest(
        Layer(MEDIA_CONFIG, "sha256:" + hashlib.sha256(b"secret").hexdigest(), 6), ()
    )
    path = ollama.root / "manifests" / "registry.ollama.ai" / "library" / "link" / "latest"
    path.parent.mkdir()
    path.write_bytes(manifest.to_json())
    (ollama.root / "blobs" / ("sha256-" + manifest.config.digest[7:])).symlink_to(secret)
    bad_name = ollama.root / "manifests" / "registry.ollama.ai" / "library" / "BAD NAME" / "x"
    bad_name.parent.mkdir()
    bad_name.write_bytes(good)
    errors: dict[str, Exception] = {}
    imported = import_ollama(store, ollama.root, on_error=errors.__setitem__)
    assert imported == ["hf.co/org/repo:q4_k_m", "tiny:latest"]
    assert set(errors) == {
        "registry.ollama.ai/library/link:latest",
        "registry.ollama.ai/library/BAD NAME/x",
    }
    assert "not a regular file" in str(errors["registry.ollama.ai/library/link:latest"])
    assert not store.blobs.has(manifest.config.digest)


def test_bad_manifest_digest_is_refused(store: ModelStore, ollama: FakeOllama) -> None:
    path = ollama.root / "manifests" / "registry.ollama.ai" / "library" / "evil" / "latest"
    path.parent.mkdir()
    body = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": MEDIA_CONFIG, "digest": "sha256:../../../etc/passwd", "size": 1},
        "layers": [],
    }
    path.write_text(json.dumps(body))
    errors: dict[str, Exception] = {}
    import_ollama(store, ollama.root, on_error=errors.__setitem__)
    assert list(errors) == ["registry.ollama.ai/library/evil:latest"]


def test_not_an_ollama_store(store: ModelStore, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        import_ollama(store, tmp_path / "nothing")
