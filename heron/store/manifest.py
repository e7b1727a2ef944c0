"""Manifests: docker distribution v2 JSON naming a config blob and the layer blobs of a model.

A manifest comes from registries, Ollama stores and our own disk, so ``parse_manifest`` treats it
as untrusted: the size is capped before decoding, every digest goes through ``parse_digest`` and
every size and layer name is checked, so a bad digest (``sha256:../../x``) is refused when the
manifest is parsed rather than when a path is built from it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from heron.store.files import DigestError, parse_digest

__all__ = [
    "MAX_LAYERS",
    "MAX_MANIFEST_BYTES",
    "MEDIA_ADAPTER",
    "MEDIA_CONFIG",
    "MEDIA_FILE",
    "MEDIA_LICENSE",
    "MEDIA_MANIFEST",
    "MEDIA_MESSAGES",
    "MEDIA_MODEL",
    "MEDIA_PARAMS",
    "MEDIA_SYSTEM",
    "MEDIA_TEMPLATE",
    "Layer",
    "Manifest",
    "ManifestError",
    "check_layer_name",
    "parse_manifest",
]

MEDIA_MODEL = "application/vnd.ollama.image.model"  # GGUF file
MEDIA_ADAPTER = "application/vnd.ollama.image.adapter"
MEDIA_TEMPLATE = "application/vnd.ollama.image.template"
MEDIA_SYSTEM = "application/vnd.ollama.image.system"
MEDIA_PARAMS = "application/vnd.ollama.image.params"  # JSON object of parameters
MEDIA_MESSAGES = "application/vnd.ollama.image.messages"  # JSON list [{role, content}]
MEDIA_LICENSE = "application/vnd.ollama.image.license"
MEDIA_FILE = "application/vnd.heron.image.file"  # one file of an HF directory; `name` set
MEDIA_CONFIG = "application/vnd.docker.container.image.v1+json"
MEDIA_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"
_OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"

MAX_MANIFEST_BYTES = 1 << 20
MAX_LAYERS = 1 << 16
MAX_BLOB_SIZE = 1 << 50  # 1 PiB: anything larger is a crafted number
_MEDIA_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9.+/_-]{0,254}")
_NAME_PART = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_LAYER_NAME_RE = re.compile(rf"{_NAME_PART}(?:/{_NAME_PART})?")


class ManifestError(ValueError):
    """A manifest is malformed: bad JSON, schema, digest, size or layer name."""


def check_layer_name(name: str) -> str:
    """Validate a layer's file name (``config.json``, ``1_Pooling/config.json``); never ``..``."""
    if not isinstance(name, str) or _LAYER_NAME_RE.fullmatch(name) is None:
        shown = repr(name[:80]) if isinstance(name, str) else type(name).__name__
        raise ManifestError(
            f"invalid layer name {shown}: expected a file name, or dir/file, of "
            "[A-Za-z0-9_][A-Za-z0-9_.-]*"
        )
    return name


@dataclass(frozen=True, slots=True)
class Layer:
    """One blob a manifest references. ``name`` is the file name of an HF-directory file."""

    media_type: str
    digest: str
    size: int
    name: str | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.media_type, str) or _MEDIA_RE.fullmatch(self.media_type) is None:
            raise ManifestError(f"invalid media type {str(self.media_type)[:80]!r}")
        try:
            parse_digest(self.digest)
        except DigestError as e:
            raise ManifestError(str(e)) from None
        if (
            isinstance(self.size, bool)
            or not isinstance(self.size, int)
            or not 0 <= self.size <= MAX_BLOB_SIZE
        ):
            raise ManifestError(f"layer {self.digest}: invalid size {self.size!r}")
        if self.name is not None:
            check_layer_name(self.name)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"mediaType": self.media_type, "digest": self.digest}
        out["size"] = self.size
        if self.name is not None:
            out["name"] = self.name
        return out


@dataclass(frozen=True, slots=True)
class Manifest:
    """A model: its config blob plus ordered layers (weights first, then text layers)."""

    config: Layer
    layers: tuple[Layer, ...]

    def __post_init__(self) -> None:
        if not isinstance(self.config, Layer) or not all(isinstance(x, Layer) for x in self.layers):
            raise ManifestError("config and layers must be Layer objects")
        if len(self.layers) > MAX_LAYERS:
            raise ManifestError(f"{len(self.layers)} layers, more than {MAX_LAYERS}")
        names = [x.name for x in self.layers if x.name is not None]
        if len(set(names)) != len(names):
            raise ManifestError("two layers have the same name")

    def to_json(self) -> bytes:
        """Canonical bytes: the file content on disk, and what ``digest()`` hashes."""
        body = {
            "schemaVersion": 2,
            "mediaType": MEDIA_MANIFEST,
            "config": self.config.to_dict(),
            "layers": [x.to_dict() for x in self.layers],
        }
        return json.dumps(body, separators=(",", ":")).encode()

    def digest(self) -> str:
        return "sha256:" + hashlib.sha256(self.to_json()).hexdigest()

    def digests(self) -> list[str]:
        """The config's and every layer's digest, config first, without repeats."""
        return list(dict.fromkeys([self.config.digest, *(x.digest for x in self.layers)]))

    def find(self, media_type: str) -> list[Layer]:
        return [x for x in self.layers if x.media_type == media_type]


def _layer(obj: Any, where: str) -> Layer:
    if not isinstance(obj, dict):
        raise ManifestError(f"{where}: expected an object")
    media_type, digest = obj.get("mediaType"), obj.get("digest")
    size: Any = obj.get("size")
    name = obj.get("name")
    if not isinstance(media_type, str) or not isinstance(digest, str):
        raise ManifestError(f"{where}: mediaType and digest must be strings")
    if name is not None and not isinstance(name, str):
        raise ManifestError(f"{where}: name must be a string")
    try:
        return Layer(media_type, digest, size, name)
    except ManifestError as e:
        raise ManifestError(f"{where}: {e}") from None


def parse_manifest(data: bytes) -> Manifest:
    """Parse and validate manifest bytes. Raises ``ManifestError``.

    Unknown keys (Ollama writes ``from`` on some layers) are ignored; they are never used.
    """
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise ManifestError("manifest must be bytes")
    if len(data) > MAX_MANIFEST_BYTES:
        raise ManifestError(f"manifest is {len(data)} bytes, above the {MAX_MANIFEST_BYTES} cap")
    try:
        obj = json.loads(bytes(data).decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise ManifestError(f"manifest is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ManifestError("manifest must be a JSON object")
    if obj.get("schemaVersion") != 2 or isinstance(obj.get("schemaVersion"), bool):
        raise ManifestError(f"unsupported schemaVersion {obj.get('schemaVersion')!r}")
    if obj.get("mediaType") not in (MEDIA_MANIFEST, _OCI_MANIFEST):
        raise ManifestError(f"unsupported manifest mediaType {str(obj.get('mediaType'))[:80]!r}")
    layers = obj.get("layers")
    if not isinstance(layers, list):
        raise ManifestError("manifest layers must be a list")
    if len(layers) > MAX_LAYERS:
        raise ManifestError(f"{len(layers)} layers, more than {MAX_LAYERS}")
    config = _layer(obj.get("config"), "config")
    return Manifest(config, tuple(_layer(x, f"layer {i}") for i, x in enumerate(layers)))


def walk_manifests(root: Path) -> Iterator[tuple[tuple[str, str, str, str], Path]]:
    """``(host, namespace, model, tag)`` and path of every regular file four levels under
    ``root`` (a ``manifests/`` directory), sorted; never follows a symlink, skips dot-files
    (temporary files of atomic writes)."""

    def walk(d: Path, parts: tuple[str, ...]) -> Iterator[tuple[tuple[str, str, str, str], Path]]:
        try:
            with os.scandir(d) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            logging.getLogger(__name__).warning("cannot read %s: %s", d, e)
            return
        for entry in entries:
            if entry.name.startswith("."):
                continue
            here = (*parts, entry.name)
            if len(here) < 4 and entry.is_dir(follow_symlinks=False):
                yield from walk(Path(entry.path), here)
            elif len(here) == 4 and entry.is_file(follow_symlinks=False):
                yield (here[0], here[1], here[2], here[3]), Path(entry.path)

    yield from walk(root, ())


def read_manifest_file(path: Path) -> Manifest:
    """Parse the manifest at ``path`` without following a symlink; reads at most the cap."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    with os.fdopen(fd, "rb") as f:
        return parse_manifest(f.read(MAX_MANIFEST_BYTES + 1))
