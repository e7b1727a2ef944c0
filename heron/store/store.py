"""The model store: manifests by name over content-addressed blobs.

Layout under the root (``HERON_MODELS``, default ``~/.heron/models``)::

    manifests/<host>/<namespace>/<model>/<tag>    JSON manifest (docker v2)
    blobs/sha256-<hex>                            read-only blobs (blobs.py)
    blobs/.partial/                               in-progress writes and their locks
    tmp/dirs/<manifest hex>/                      HF directories rebuilt from hard links

Manifests are written atomically (temp file, fsync, rename, fsync of the directory). A name only
becomes a path through ``ModelName.manifest_relpath()``; walking ``manifests/`` never follows
symlinks and skips (with a log line) anything that is not a valid name holding a valid manifest.
"""

from __future__ import annotations

import builtins
import json
import logging
import os
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from heron import env
from heron.store.blobs import BlobStore
from heron.store.create import create_model
from heron.store.files import fsync_dir
from heron.store.manifest import (
    MEDIA_ADAPTER,
    MEDIA_FILE,
    MEDIA_LICENSE,
    MEDIA_MESSAGES,
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_SYSTEM,
    MEDIA_TEMPLATE,
    Manifest,
    ManifestError,
    read_manifest_file,
    walk_manifests,
)
from heron.store.modelfile import MESSAGE_ROLES, Modelfile, ModelfileError, coerce_parameter
from heron.store.names import InvalidNameError, ModelName, parse_name
from heron.store.stored import ModelNotFoundError, StoredModel

__all__ = ["ModelNotFoundError", "ModelStore", "StoredModel"]

logger = logging.getLogger(__name__)

MAX_TEXT_BLOB_BYTES = 4 << 20  # config, params, template, system, license, messages layers
STALE_BUILD_SECONDS = 3600.0


class ModelStore:
    """Manifests plus blobs under one root. Creating it removes stale partial files."""

    def __init__(self, root: Path | None = None) -> None:
        self.root = (Path(root).expanduser() if root is not None else env.models_dir()).absolute()
        self.manifests_dir = self.root / "manifests"
        self.tmp_dir = self.root / "tmp"
        for d in (self.manifests_dir, self.tmp_dir):
            d.mkdir(parents=True, exist_ok=True)
        self.blobs = BlobStore(self.root / "blobs")
        self.blobs.cleanup_partials()

    # -- reading ----------------------------------------------------------------------------

    def manifest_path(self, name: ModelName) -> Path:
        return self.manifests_dir.joinpath(*name.manifest_relpath())

    def _manifest_files(self) -> Iterator[tuple[tuple[str, str, str, str], Path]]:
        return walk_manifests(self.manifests_dir)

    def _read_manifest(self, path: Path) -> Manifest:
        return read_manifest_file(path)

    def list(self) -> list[StoredModel]:
        """Every valid model, sorted by name; invalid names or manifests are logged and skipped."""
        models = []
        for parts, path in self._manifest_files():
            try:
                name = ModelName(*parts)
                models.append(self._stored(name, path))
            except (InvalidNameError, ManifestError, OSError) as e:
                logger.warning("skipping %s: %s", path, e)
        return sorted(models, key=lambda m: m.name.display)

    def get(self, name: str | ModelName) -> StoredModel:
        """The model of that name. ``InvalidNameError`` for a bad name, ``ModelNotFoundError``
        when there is no manifest, ``ManifestError`` when it is unreadable."""
        mn = name if isinstance(name, ModelName) else parse_name(name)
        return self._stored(mn, self._existing_manifest(mn))

    def _existing_manifest(self, name: ModelName) -> Path:
        path = self.manifest_path(name)
        if not self._no_symlinks(path, stat.S_ISREG):
            raise ModelNotFoundError(f"model {name.display!r} not found")
        return path

    def _no_symlinks(self, path: Path, final_kind: Callable[[int], bool]) -> bool:
        """True when every component under manifests/ is a real directory (never a symlink),
        and the last one passes ``final_kind`` (False if anything is missing)."""
        parts = path.relative_to(self.manifests_dir).parts
        here = self.manifests_dir
        for i, part in enumerate(parts):
            here = here / part
            try:
                mode = os.lstat(here).st_mode
            except OSError:
                return False
            if not (final_kind(mode) if i == len(parts) - 1 else stat.S_ISDIR(mode)):
                return False
        return True

    def _stored(self, name: ModelName, path: Path) -> StoredModel:
        manifest = self._read_manifest(path)
        mtime = os.stat(path, follow_symlinks=False).st_mtime
        config = self._json_blob(manifest.config.digest, dict, "config") or {}
        if manifest.find(MEDIA_MODEL):
            fmt = "gguf"
        elif manifest.find(MEDIA_FILE):
            fmt = "safetensors"
        else:
            raise ManifestError(f"{name.display}: no model layer Heron can load")
        family = config.get("model_family")
        if not isinstance(family, str):
            families = config.get("model_families")
            family = families[0] if isinstance(families, list) and families else None
        return StoredModel(
            name=name,
            manifest=manifest,
            digest=manifest.digest(),
            size=manifest.config.size + sum(x.size for x in manifest.layers),
            modified_at=mtime,
            format=fmt,
            parameters=self._parameters(manifest),
            template=self._last_text(manifest, MEDIA_TEMPLATE),
            system=self._last_text(manifest, MEDIA_SYSTEM),
            license=[
                t for x in manifest.find(MEDIA_LICENSE) if (t := self._text(x.digest)) is not None
            ],
            messages=self._messages(manifest),
            family=family if isinstance(family, str) else None,
            config=config,
        )

    def _text(self, digest: str) -> str | None:
        """A small blob as text; None (logged) when missing, too large or not UTF-8."""
        try:
            fd = os.open(self.blobs.path(digest), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError as e:
            logger.warning("blob %s unreadable: %s", digest, e)
            return None
        with os.fdopen(fd, "rb") as f:
            if os.fstat(f.fileno()).st_size > MAX_TEXT_BLOB_BYTES:
                logger.warning("blob %s is over %d bytes; ignored", digest, MAX_TEXT_BLOB_BYTES)
                return None
            data = f.read(MAX_TEXT_BLOB_BYTES + 1)
        try:
            return data.decode("utf-8")
        except UnicodeDecodeError:
            logger.warning("blob %s is not UTF-8; ignored", digest)
            return None

    def _json_blob(self, digest: str, kind: type, what: str) -> Any:
        text = self._text(digest)
        if text is None:
            return None
        try:
            value = json.loads(text)
        except (json.JSONDecodeError, RecursionError):
            value = None
        if not isinstance(value, kind):
            logger.warning("%s blob %s is not a JSON %s; ignored", what, digest, kind.__name__)
            return None
        return value

    def _last_text(self, manifest: Manifest, media_type: str) -> str | None:
        layers = manifest.find(media_type)
        return self._text(layers[-1].digest) if layers else None

    def _parameters(self, manifest: Manifest) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for layer in manifest.find(MEDIA_PARAMS):
            raw = self._json_blob(layer.digest, dict, "params") or {}
            for key, value in raw.items():
                try:
                    if key == "stop":
                        items = value if isinstance(value, list) else [value]
                        out["stop"] = [coerce_parameter("stop", v) for v in items]
                    else:
                        out[key] = coerce_parameter(key, value)
                except ModelfileError as e:
                    logger.warning("params blob %s: %s; ignored", layer.digest, e)
        return out

    def _messages(self, manifest: Manifest) -> builtins.list[dict[str, str]]:
        out: list[dict[str, str]] = []
        for layer in manifest.find(MEDIA_MESSAGES):
            for m in self._json_blob(layer.digest, list, "messages") or []:
                ok = isinstance(m, dict) and m.get("role") in MESSAGE_ROLES
                if ok and isinstance(m.get("content"), str):
                    out.append({"role": m["role"], "content": m["content"]})
                else:
                    logger.warning("messages blob %s: bad message ignored", layer.digest)
        return out

    def model_path(self, model: StoredModel) -> Path:
        """What the loader opens. GGUF: the blob. Safetensors: ``tmp/dirs/<manifest hex>/`` with
        one hard link (else symlink) per file layer, named by the layer; rebuilt when a blob's
        file changed (e.g. a re-pull after tampering)."""
        models = model.manifest.find(MEDIA_MODEL)
        if models:
            return self.blobs.path(models[0].digest)
        return self._materialise(model.manifest)

    def adapter_path(self, model: StoredModel) -> Path | None:
        """What the engine loads as the model's LoRA adapter (Modelfile ADAPTER): the GGUF
        adapter blob, or the PEFT directory ``adapter/`` of the rebuilt directory; None
        without one."""
        layers = model.manifest.find(MEDIA_ADAPTER)
        if not layers:
            return None
        if layers[0].name is None:
            return self.blobs.path(layers[0].digest)
        return self._materialise(model.manifest) / "adapter"

    def _materialise(self, manifest: Manifest) -> Path:
        hexd = manifest.digest()[7:]
        dirs = self.tmp_dir / "dirs"
        final = dirs / hexd
        files: list[tuple[str, Path]] = []
        named = [x for x in manifest.find(MEDIA_ADAPTER) if x.name is not None]
        for layer in [*manifest.find(MEDIA_FILE), *named]:
            if layer.name is None:
                raise ManifestError(f"file layer {layer.digest} has no name")
            blob = self.blobs.path(layer.digest)
            if not self.blobs.has(layer.digest):
                raise FileNotFoundError(f"blob {layer.digest} ({layer.name}) is missing")
            files.append((layer.name, blob))
        if final.is_dir() and _links_current(final, files):
            return final
        build = dirs / f".build-{hexd}-{uuid.uuid4().hex}"
        build.mkdir(parents=True)
        base = build.resolve()
        try:
            for name, blob in files:
                target = build / name
                if not target.resolve().is_relative_to(base):  # names are checked; be sure
                    raise ManifestError(f"layer name {name!r} leaves the model directory")
                target.parent.mkdir(parents=True, exist_ok=True)
                try:
                    os.link(blob, target)
                except OSError:
                    os.symlink(blob, target)
            if final.exists():
                old = dirs / f".old-{hexd}-{uuid.uuid4().hex}"
                os.rename(final, old)
                shutil.rmtree(old, ignore_errors=True)
            os.rename(build, final)
        except OSError:
            shutil.rmtree(build, ignore_errors=True)
            if final.is_dir() and _links_current(final, files):
                return final  # another process built it first
            raise
        return final

    # -- writing ----------------------------------------------------------------------------

    def write_manifest(self, name: ModelName, manifest: Manifest) -> None:
        """Write atomically: temp file in the same directory, fsync, rename, fsync directory."""
        path = self.manifest_path(name)
        here = self.manifests_dir
        for part in path.parent.relative_to(self.manifests_dir).parts:
            here = here / part
            try:
                here.mkdir()
            except FileExistsError:
                pass
            if not stat.S_ISDIR(os.lstat(here).st_mode):
                raise ValueError(f"{here}: not a directory (or a symlink); refusing to write")
        tmp = path.parent / f".{path.name}.tmp-{uuid.uuid4().hex}"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(manifest.to_json())
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)
        self.blobs.unpin(manifest.digests())

    def copy(self, src: str, dst: str) -> None:
        source = parse_name(src)
        target = parse_name(dst)
        manifest = self._read_manifest(self._existing_manifest(source))
        self.write_manifest(target, manifest)

    def delete(self, name: str) -> None:
        """Remove the manifest (``ModelNotFoundError`` if absent), then ``gc()``."""
        mn = parse_name(name)
        path = self._existing_manifest(mn)
        path.unlink()
        parent = path.parent
        for _ in range(3):  # model, namespace, host directories when now empty
            try:
                parent.rmdir()
            except OSError:
                break
            parent = parent.parent
        fsync_dir(parent)
        self.gc()

    def gc(self) -> builtins.list[str]:
        """Remove blobs that no manifest references (never one a writer holds or one just
        written whose manifest is still to come) and stale rebuilt directories. Returns the
        removed digests. Does nothing if some manifest cannot be read."""
        referenced: set[str] = set()
        live_dirs: set[str] = set()
        for _, path in self._manifest_files():
            try:
                manifest = self._read_manifest(path)
            except ManifestError as e:
                logger.warning("gc: ignoring invalid manifest %s: %s", path, e)
                continue
            except OSError as e:
                logger.warning("gc: cannot read %s (%s); nothing removed", path, e)
                return []
            referenced.update(manifest.digests())
            live_dirs.add(manifest.digest()[7:])
        removed = [
            d for d in self.blobs.digests() if d not in referenced and self.blobs.remove_unused(d)
        ]
        if removed:
            logger.info("removed %d unused blob(s)", len(removed))
        self._gc_dirs(live_dirs)
        return removed

    def _gc_dirs(self, live: set[str]) -> None:
        dirs = self.tmp_dir / "dirs"
        if not dirs.is_dir():
            return
        now = time.time()
        with os.scandir(dirs) as it:
            for entry in list(it):
                building = entry.name.startswith(".build-")
                if (
                    building
                    and now - entry.stat(follow_symlinks=False).st_mtime < STALE_BUILD_SECONDS
                ):
                    continue
                if entry.name in live:
                    continue
                if entry.is_dir(follow_symlinks=False):
                    shutil.rmtree(entry.path, ignore_errors=True)
                else:
                    os.unlink(entry.path)

    def verify(self, name: str) -> builtins.list[str]:
        """Digests (config and layers) whose blob is missing or no longer matches its digest."""
        manifest = self._read_manifest(self._existing_manifest(parse_name(name)))
        return [d for d in manifest.digests() if not self.blobs.verify(d)]

    def create(
        self,
        name: str,
        modelfile: Modelfile,
        base_dir: Path | None = None,
        files: dict[str, str] | None = None,
        adapters: dict[str, str] | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Build a model from a Modelfile; see ``heron.store.create.create_model``."""
        return create_model(self, name, modelfile, base_dir, files, adapters)


def _links_current(directory: Path, files: list[tuple[str, Path]]) -> bool:
    """True when every file in ``directory`` is still a link to its blob's current file."""
    for name, blob in files:
        path = directory / name
        try:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                if os.readlink(path) != str(blob) or not blob.is_file():
                    return False
            else:
                want = os.stat(blob)
                if (st.st_ino, st.st_dev) != (want.st_ino, want.st_dev):
                    return False
        except OSError:
            return False
    return True
