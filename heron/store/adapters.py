"""A Modelfile's ``ADAPTER``: a LoRA adapter stored as layers of the model.

An adapter is a GGUF LoRA file (llama.cpp's format, what Ollama's ``ADAPTER`` takes), stored as
one ``application/vnd.ollama.image.adapter`` layer, or a PEFT directory, stored as one such
layer per file, named ``adapter/adapter_config.json`` and
``adapter/adapter_model.safetensors`` (the store rebuilds the directory from hard links, as it
does an HF model's). Blobs are content-addressed and verified like every other.

Before a manifest refers to an adapter it is loaded and checked against the base model
(``heron.lora.load_adapter``: targets, shapes, a readable file), so a bad adapter is a clean
``CreateError`` and no model is written.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any

from heron.store.blobs import BlobStore
from heron.store.files import DigestError, parse_digest
from heron.store.manifest import MEDIA_ADAPTER, MEDIA_FILE, MEDIA_MODEL, Layer

__all__ = [
    "ADAPTER_DIR",
    "MAX_ADAPTER_RANK",
    "PEFT_FILES",
    "AdapterError",
    "adapter_files",
    "check_adapter_files",
    "check_adapters",
    "with_adapter",
]

PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")
ADAPTER_DIR = "adapter"  # PEFT files are the layers adapter/<file>
GGUF_MAGIC = b"GGUF"
# The largest rank a stored adapter may have: its model's own engine is sized to its rank.
MAX_ADAPTER_RANK = 256

Status = dict[str, Any]


class AdapterError(ValueError):
    """The adapter cannot be stored; the message says why (a ``CreateError`` to callers)."""


def adapter_files(path: Path) -> dict[str, Path]:
    """The files of the adapter at ``path`` by upload name: a GGUF file by its base name, or
    a PEFT directory's ``adapter_config.json`` and ``adapter_model.safetensors`` (anything
    else there, such as a README, is left out). Raises AdapterError."""
    if path.is_file():
        with path.open("rb") as f:
            if f.read(4) != GGUF_MAGIC:
                raise AdapterError(
                    f"ADAPTER {path}: not a GGUF LoRA file (or a PEFT adapter directory)"
                )
        return {path.name: path}
    if not path.is_dir():
        raise AdapterError(f"ADAPTER {path}: no such file or directory")
    missing = [n for n in PEFT_FILES if not (path / n).is_file()]
    if missing:
        raise AdapterError(
            f"ADAPTER {path}: a PEFT adapter directory needs {' and '.join(PEFT_FILES)} "
            f"({', '.join(missing)} missing)"
        )
    return {n: path / n for n in PEFT_FILES}


def check_adapters(
    paths: list[str], base_dir: Path | None, files: dict[str, str]
) -> dict[str, str]:
    """What ``with_adapter`` will store, checked before any work: at most one adapter, the
    Modelfile's ADAPTER path (only with ``base_dir``: a local Modelfile) holding a GGUF or
    PEFT adapter, or uploaded ``files`` (see ``check_adapter_files``). Returns the checked
    files. Raises AdapterError."""
    if len(paths) + bool(files) > 1:
        raise AdapterError("one ADAPTER per model: Heron runs a model with one LoRA adapter")
    if paths:
        if base_dir is None:
            raise AdapterError("ADAPTER paths are read from a local Modelfile only")
        adapter_files(_local(paths[0], base_dir))
    return check_adapter_files(files)


def check_adapter_files(files: dict[str, str]) -> dict[str, str]:
    """Ollama's create ``adapters`` ({file name: digest}) checked: one ``*.gguf`` file, or
    the two PEFT files. Returns them with parsed digests. Raises AdapterError."""
    if not files:
        return {}
    out: dict[str, str] = {}
    for name, digest in files.items():
        try:
            out[name] = parse_digest(digest)
        except DigestError as e:
            raise AdapterError(f"adapters: {e}") from None
    names = sorted(out)
    if len(names) == 1 and names[0].lower().endswith(".gguf"):
        return out
    if names != sorted(PEFT_FILES):
        shown = ", ".join(n[:80] for n in names[:4])
        raise AdapterError(
            f"adapters: expected one .gguf LoRA file, or {' and '.join(PEFT_FILES)} of a PEFT "
            f"adapter; got {shown}"
        )
    return out


def with_adapter(
    blobs: BlobStore,
    weights: list[Layer],
    paths: list[str],
    base_dir: Path | None,
    files: dict[str, str],
) -> Generator[Status, None, list[Layer]]:
    """``weights`` with the new model's adapter: the Modelfile's ADAPTER ``paths`` (read
    from disk, relative to ``base_dir``), else ``files`` (uploaded blobs, checked by
    ``check_adapters``), else the base model's own adapter, kept. Stores and checks a new
    adapter, yielding status lines. Raises AdapterError."""
    if not paths and not files:
        return weights
    if any(x.media_type == MEDIA_ADAPTER for x in weights):
        raise AdapterError("the base model has an adapter already; create from its base")
    layers: list[Layer] = []
    if paths:
        assert base_dir is not None  # check_adapters refused it
        for name, file in adapter_files(_local(paths[0], base_dir)).items():
            digest, created = blobs.place_file(file, link=False)
            yield _status(digest, created)
            layers.append(_layer(blobs, name, digest))
    else:
        for name, digest in files.items():
            if not blobs.has(digest):
                raise AdapterError(
                    f"adapters: blob {digest} ({name}) is not in the store; upload it first"
                )
            yield _status(digest, False)
            layers.append(_layer(blobs, name, digest))
    yield {"status": "checking adapter"}
    _check_against_base(blobs, weights, layers)
    return [*weights, *layers]


def _local(path: str, base_dir: Path) -> Path:
    source = Path(os.path.expanduser(path))
    return source if source.is_absolute() else base_dir / source


def _layer(blobs: BlobStore, upload_name: str, digest: str) -> Layer:
    name = None if upload_name.lower().endswith(".gguf") else f"{ADAPTER_DIR}/{upload_name}"
    return Layer(MEDIA_ADAPTER, digest, blobs.size(digest), name)


def _status(digest: str, created: bool) -> Status:
    return {"status": f"{'creating new' if created else 'using existing'} layer {digest}"}


def _check_against_base(blobs: BlobStore, weights: list[Layer], adapter: list[Layer]) -> None:
    """Load the adapter as the engine will, against the base model's config. Raises
    AdapterError naming the problem."""
    from heron.loader import load_checkpoint
    from heron.lora import load_adapter

    with _tree(blobs, weights, MEDIA_FILE) as model_dir, _tree(blobs, adapter) as adapter_dir:
        models = [x for x in weights if x.media_type == MEDIA_MODEL]
        model_path = blobs.path(models[0].digest) if models else model_dir
        gguf = [x for x in adapter if x.name is None]
        adapter_path = blobs.path(gguf[0].digest) if gguf else adapter_dir / ADAPTER_DIR
        try:
            config = load_checkpoint(str(model_path)).config
            load_adapter(str(adapter_path), config, MAX_ADAPTER_RANK)
        except (OSError, ValueError) as e:
            raise AdapterError(f"ADAPTER: {e}") from None


@contextlib.contextmanager
def _tree(blobs: BlobStore, layers: list[Layer], media_type: str | None = None) -> Iterator[Path]:
    """A temporary directory of symlinks to the named layers' blobs (of ``media_type``, or
    all), laid out by layer name."""
    with tempfile.TemporaryDirectory(prefix="heron-adapter-") as tmp:
        root = Path(tmp)
        for layer in layers:
            if layer.name is None or (media_type and layer.media_type != media_type):
                continue
            target = root / layer.name  # names are checked: a file or dir/file, never ..
            target.parent.mkdir(parents=True, exist_ok=True)
            os.symlink(blobs.path(layer.digest), target)
        yield root
