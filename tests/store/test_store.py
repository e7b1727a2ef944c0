"""ModelStore: list, get, copy, delete, gc, verify and materialised HF directories."""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest

from heron import env
from heron.store import InvalidNameError, ModelNotFoundError, ModelStore, parse_modelfile
from heron.store.blobs import BlobStore
from heron.store.manifest import MEDIA_CONFIG, MEDIA_FILE, MEDIA_MODEL, Layer, Manifest
from heron.store.names import parse_name


def make(store: ModelStore, gguf: Path, name: str, system: str = "hi") -> None:
    mf = parse_modelfile(f"FROM ./{gguf.name}\nSYSTEM {system}\n")
    assert list(store.create(name, mf, base_dir=gguf.parent))[-1] == {"status": "success"}


def put(blobs: BlobStore, data: bytes) -> Layer:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with blobs.writer(digest, len(data)) as w:
        if not w.done:
            w.write(data)
        w.commit()
    return Layer(MEDIA_FILE, digest, len(data))


def test_models_dir_default_and_override(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("HERON_MODELS", raising=False)
    assert env.models_dir() == Path.home() / ".heron" / "models"
    monkeypatch.setenv("HERON_MODELS", "~/elsewhere")
    assert env.models_dir() == Path.home() / "elsewhere"
    monkeypatch.setenv("HERON_MODELS", str(tmp_path / "m"))
    assert ModelStore().root == tmp_path / "m"
    assert (tmp_path / "m" / "manifests").is_dir() and (tmp_path / "m" / "blobs").is_dir()


def test_list_get_copy_delete(store: ModelStore, tiny_gguf: Callable[..., Path]) -> None:
    make(store, tiny_gguf(), "a:1")
    make(store, tiny_gguf("other.gguf", seed=1), "ns/b")
    assert [m.name.display for m in store.list()] == ["a:1", "ns/b:latest"]
    a = store.get("A:1")
    assert a.name == parse_name("a:1")
    assert a.modified_at == os.stat(store.manifest_path(a.name)).st_mtime
    assert (
        a.digest == "sha256:" + hashlib.sha256(store.manifest_path(a.name).read_bytes()).hexdigest()
    )
    store.copy("a:1", "hf.co/org/copy:Q4_K_M")
    c = store.get("hf.co/org/copy:q4_k_m")
    assert c.manifest == a.manifest and c.name.display == "hf.co/org/copy:q4_k_m"
    assert store.manifest_path(c.name) == store.root / "manifests/hf.co/org/copy/q4_k_m"
    store.delete("a:1")
    with pytest.raises(ModelNotFoundError):
        store.get("a:1")
    assert store.get("hf.co/org/copy:q4_k_m").manifest == a.manifest  # blobs still there
    assert all(store.blobs.has(d) for d in a.manifest.digests())
    assert not (store.root / "manifests/registry.heron.local/library/a").exists()
    with pytest.raises(ModelNotFoundError):
        store.delete("a:1")
    with pytest.raises(ModelNotFoundError):
        store.copy("a:1", "z")


def test_shared_blob_survives_deleting_one_model(
    store: ModelStore, tiny_gguf: Callable[..., Path]
) -> None:
    gguf = tiny_gguf()
    make(store, gguf, "one", system="first")
    make(store, gguf, "two", system="second")
    one, two = store.get("one"), store.get("two")
    weights = one.manifest.find(MEDIA_MODEL)[0].digest
    assert two.manifest.find(MEDIA_MODEL)[0].digest == weights
    only_one = set(one.manifest.digests()) - set(two.manifest.digests())
    assert len(only_one) == 1  # its system prompt
    store.delete("one")
    assert store.blobs.has(weights) and store.blobs.verify(weights)
    assert not any(store.blobs.has(d) for d in only_one)
    store.delete("two")
    assert store.blobs.digests() == []
    assert store.list() == []


def test_get_refuses_bad_names_without_touching_files(store: ModelStore) -> None:
    for bad in ["../x", "/etc/passwd", "a\x00b", "%2e%2e/x", "x" * 10_000, "a/b/c/d"]:
        with pytest.raises(InvalidNameError):
            store.get(bad)
        with pytest.raises(InvalidNameError):
            store.delete(bad)
        with pytest.raises(InvalidNameError):
            store.copy("x", bad)
    with pytest.raises(ModelNotFoundError):
        store.get("missing")


def test_list_skips_invalid_entries(
    store: ModelStore, tiny_gguf: Callable[..., Path], tmp_path: Path
) -> None:
    make(store, tiny_gguf(), "good")
    good = store.manifest_path(parse_name("good")).read_bytes()
    lib = store.root / "manifests" / "registry.heron.local" / "library"
    (lib / "BAD NAME").mkdir()
    (lib / "BAD NAME" / "latest").write_bytes(good)
    (lib / "garbage").mkdir()
    (lib / "garbage" / "latest").write_text("{not a manifest")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "latest").write_bytes(good)
    (lib / "linked").symlink_to(outside)  # a symlinked directory is never followed
    (lib / "good" / "symlinked-tag").symlink_to(outside / "latest")
    (store.root / "manifests" / "stray-file").write_text("x")
    assert [m.name.display for m in store.list()] == ["good:latest"]
    with pytest.raises(ModelNotFoundError):
        store.get("linked")
    with pytest.raises(ModelNotFoundError):
        store.get("good:symlinked-tag")


def test_gc_keeps_blobs_a_manifest_is_still_coming_for(store: ModelStore) -> None:
    layer = put(store.blobs, b"a layer of a pull in progress")
    assert store.gc() == []  # just written by this process, its manifest not yet written
    config = put(store.blobs, b"{}")
    store.write_manifest(parse_name("m"), Manifest(config, (layer,)))
    store.delete("m")
    assert store.blobs.digests() == []


def test_gc_removes_unreferenced_blobs(store: ModelStore) -> None:
    layer = put(store.blobs, b"orphan")
    store.blobs.unpin([layer.digest])
    assert store.gc() == [layer.digest]
    assert not store.blobs.has(layer.digest)


def test_write_manifest_is_atomic(store: ModelStore) -> None:
    config = put(store.blobs, b"{}")
    manifest = Manifest(Layer(MEDIA_CONFIG, config.digest, config.size), ())
    name = parse_name("ns/m:t")
    store.write_manifest(name, manifest)
    path = store.manifest_path(name)
    assert path.read_bytes() == manifest.to_json()
    assert os.listdir(path.parent) == ["t"]  # no temporary file left


def test_verify_finds_a_flipped_byte(store: ModelStore, tiny_gguf: Callable[..., Path]) -> None:
    make(store, tiny_gguf(), "m")
    assert store.verify("m") == []
    weights = store.get("m").manifest.find(MEDIA_MODEL)[0].digest
    path = store.blobs.path(weights)
    path.chmod(0o644)
    data = bytearray(path.read_bytes())
    data[-1] ^= 0xFF
    path.write_bytes(bytes(data))
    assert store.verify("m") == [weights]
    path.unlink()
    assert store.verify("m") == [weights]


def test_materialised_directory(store: ModelStore) -> None:
    config = put(store.blobs, json.dumps({"model_format": "safetensors"}).encode())
    files = [
        Layer(MEDIA_FILE, put(store.blobs, b'{"model_type": "llama"}').digest, 22, "config.json"),
        Layer(MEDIA_FILE, put(store.blobs, b"weights").digest, 7, "model.safetensors"),
        Layer(MEDIA_FILE, put(store.blobs, b"{}").digest, 2, "1_Pooling/config.json"),
    ]
    store.write_manifest(
        parse_name("st"), Manifest(Layer(MEDIA_CONFIG, config.digest, config.size), tuple(files))
    )
    m = store.get("st")
    assert m.format == "safetensors"
    path = store.model_path(m)
    assert path == store.root / "tmp" / "dirs" / m.digest[7:]
    for layer in files:
        assert layer.name is not None
        assert (path / layer.name).stat().st_ino == store.blobs.path(layer.digest).stat().st_ino
    assert store.model_path(m) == path  # built once
    # a blob replaced by a fresh copy (a repair): the directory is rebuilt to link the new file
    weights = store.blobs.path(files[1].digest)
    store.blobs.remove(files[1].digest)
    put(store.blobs, b"weights")
    assert (path / "model.safetensors").stat().st_ino != weights.stat().st_ino
    assert store.model_path(m) == path
    assert (path / "model.safetensors").stat().st_ino == weights.stat().st_ino
    store.delete("st")
    assert not path.exists()  # gc removes directories of deleted manifests


def test_write_manifest_refuses_a_symlinked_directory(store: ModelStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (store.root / "manifests" / "registry.heron.local").mkdir()
    (store.root / "manifests" / "registry.heron.local" / "library").symlink_to(outside)
    config = put(store.blobs, b"{}")
    with pytest.raises(ValueError, match="symlink"):
        store.write_manifest(parse_name("m"), Manifest(config, ()))
    assert list(outside.iterdir()) == []
