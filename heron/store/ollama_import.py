"""Import models from an existing Ollama store (``~/.ollama/models``) without copying gigabytes.

Ollama's layout is the same as ours: ``manifests/<host>/<namespace>/<model>/<tag>`` and
``blobs/sha256-<hex>``. Its files are untrusted input all the same: the walk never follows a
symlink, names must pass our grammar, manifests go through our parser, and every blob is hashed
as it is placed (hard link, else reflink, else copy). A model whose blob does not match its
digest gets nothing written, and the blobs it newly placed are removed.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

from heron.store.files import DigestMismatchError
from heron.store.manifest import Manifest, ManifestError, read_manifest_file, walk_manifests
from heron.store.names import DEFAULT_HOST, InvalidNameError, ModelName, parse_name
from heron.store.store import ModelStore

__all__ = ["OLLAMA_HOST", "OllamaImportError", "import_ollama"]

logger = logging.getLogger(__name__)

OLLAMA_HOST = "registry.ollama.ai"


class OllamaImportError(ValueError):
    """Some models could not be imported. ``errors`` maps each display name to its problem;
    ``imported`` lists the models that were imported anyway."""

    def __init__(self, errors: dict[str, str], imported: list[str]) -> None:
        super().__init__(
            "could not import: " + "; ".join(f"{name}: {why}" for name, why in errors.items())
        )
        self.errors = errors
        self.imported = imported


def _import_one(store: ModelStore, blobs_dir: Path, name: ModelName, manifest: Manifest) -> None:
    placed: list[str] = []
    try:
        for layer in [manifest.config, *manifest.layers]:
            if layer.digest in placed:
                continue
            src = blobs_dir / ("sha256-" + layer.digest[7:])
            try:
                st = os.lstat(src)
            except FileNotFoundError:
                raise ValueError(f"blob {layer.digest} is missing") from None
            if not stat.S_ISREG(st.st_mode):
                raise ValueError(f"blob {layer.digest} is not a regular file")
            if st.st_size != layer.size:
                raise ValueError(
                    f"blob {layer.digest} is {st.st_size} bytes, the manifest says {layer.size}"
                )
            digest, created = store.blobs.place_file(src, expected=layer.digest)
            if created:
                placed.append(digest)
    except (ValueError, OSError):
        for digest in placed:  # referenced by no manifest: nothing is left behind
            store.blobs.remove(digest)
        raise
    store.write_manifest(name, manifest)


def import_ollama(
    store: ModelStore,
    ollama_root: Path,
    names: list[str] | None = None,
    on_error: Callable[[str, Exception], None] | None = None,
) -> list[str]:
    """Import every model of the Ollama store at ``ollama_root`` (or only ``names``, parsed with
    Ollama's default host) under the same names; returns their display names.

    A model that fails (bad name, manifest or blob) is skipped: ``on_error(name, exc)`` is called
    if given, else ``OllamaImportError`` is raised after the others are imported.
    """
    root = Path(ollama_root).expanduser().resolve()
    manifests, blobs_dir = root / "manifests", root / "blobs"
    if not manifests.is_dir() or manifests.is_symlink():
        raise FileNotFoundError(f"{root}: no manifests directory; is this an Ollama store?")
    wanted = {parse_name(n, default_host=OLLAMA_HOST) for n in names} if names else None
    imported: list[str] = []
    errors: dict[str, str] = {}

    def fail(label: str, exc: Exception) -> None:
        logger.warning("ollama import: %s: %s", label, exc)
        if on_error is not None:
            on_error(label, exc)
        else:
            errors[label] = str(exc)

    seen: set[ModelName] = set()
    for parts, path in walk_manifests(manifests):
        try:
            name = ModelName(*(p.lower() for p in parts))
        except InvalidNameError as e:
            fail("/".join(parts)[:200], e)
            continue
        if wanted is not None and name not in wanted:
            continue
        seen.add(name)
        # Ollama's own registry names become Heron's short names (`llama3.2:latest`).
        local = (
            ModelName(DEFAULT_HOST, *name.manifest_relpath()[1:])
            if name.host == OLLAMA_HOST
            else name
        )
        try:
            _import_one(store, blobs_dir, local, read_manifest_file(path))
        except (ManifestError, DigestMismatchError, ValueError, OSError) as e:
            fail(name.display, e)
            continue
        imported.append(local.display)
    for name in sorted(wanted - seen, key=lambda n: n.display) if wanted else []:
        fail(name.display, LookupError("not found in the Ollama store"))
    if errors:
        raise OllamaImportError(errors, imported)
    return imported
