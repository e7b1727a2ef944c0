"""``ModelStore.create``: a model from a Modelfile.

The weights come from one of three places:

- ``files`` ({file name: digest} of blobs already in the store, as the HTTP API sends them):
  one ``*.gguf``, or an HF directory's files (``config.json`` + ``*.safetensors`` + tokenizer);
- ``FROM <model name>``: the base model's weight layers and config are reused, and its template,
  system prompt, parameters, messages and license are kept unless the Modelfile overrides them;
- ``FROM <path>``, only when the caller passes ``base_dir`` (a local, trusted Modelfile; the HTTP
  API never does): a GGUF file or an HF directory, imported into the store.

A GGUF file is validated by Heron's hardened parser, and safetensors headers are bounds-checked,
before a manifest refers to them: a crafted file is a clean ``CreateError`` and no model is
written. Pickle checkpoints (``*.bin`` and friends) are never stored.
"""

from __future__ import annotations

import hashlib
import json
import os
import struct
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import Any, Protocol

from heron.store.adapters import check_adapters, with_adapter
from heron.store.blobs import BlobStore
from heron.store.files import DigestError, parse_digest
from heron.store.manifest import (
    MEDIA_CONFIG,
    MEDIA_FILE,
    MEDIA_LICENSE,
    MEDIA_MESSAGES,
    MEDIA_MODEL,
    MEDIA_PARAMS,
    MEDIA_SYSTEM,
    MEDIA_TEMPLATE,
    Layer,
    Manifest,
    ManifestError,
    check_layer_name,
)
from heron.store.modelfile import Modelfile, ModelfileError
from heron.store.names import InvalidNameError, ModelName, parse_name
from heron.store.stored import ModelNotFoundError, StoredModel

__all__ = ["CreateError", "create_model"]

PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
HF_SUFFIXES = (".json", ".safetensors", ".txt", ".model", ".jinja", ".tiktoken")
MAX_CONFIG_BYTES = 16 << 20
MAX_SAFETENSORS_HEADER = 100 << 20
_TEXT_MEDIA = (MEDIA_TEMPLATE, MEDIA_SYSTEM, MEDIA_PARAMS, MEDIA_MESSAGES, MEDIA_LICENSE)

Status = dict[str, Any]
Weights = Generator[Status, None, tuple[list[Layer], dict[str, Any]]]


class ModelStore(Protocol):
    """What creating a model needs of ``heron.store.store.ModelStore`` (which imports this
    module, so it is not imported here)."""

    @property
    def blobs(self) -> BlobStore: ...

    def get(self, name: str | ModelName) -> StoredModel: ...

    def write_manifest(self, name: ModelName, manifest: Manifest) -> None: ...


class CreateError(ValueError):
    """The model cannot be created from what was given; the message says why."""


def create_model(
    store: ModelStore,
    name: str,
    modelfile: Modelfile,
    base_dir: Path | None = None,
    files: dict[str, str] | None = None,
    adapters: dict[str, str] | None = None,
) -> Iterator[Status]:
    """Validate the request now (bad name, bad ``files`` or ``adapters`` raise before any
    status), then return an iterator that does the work, yielding Ollama's create status
    lines and ending with ``{"status": "success"}``. ``adapters`` are the uploaded files of a
    LoRA adapter (see ``heron.store.adapters``), as the Modelfile's ADAPTER is from a path."""
    target = parse_name(name)
    adapters = check_adapters(modelfile.adapters, base_dir, adapters or {})
    if modelfile.template is not None:
        check_modelfile_template(modelfile.template)
    checked: dict[str, str] = {}
    for file_name, digest in (files or {}).items():
        try:
            checked[check_layer_name(file_name)] = parse_digest(digest)
        except (ManifestError, DigestError) as e:
            raise CreateError(f"files: {e}") from None
    return _create(store, target, modelfile, base_dir, checked, adapters)


def check_modelfile_template(template: str) -> None:
    """Refuse a TEMPLATE that does not parse (Go template syntax or Jinja), naming the problem.
    Raises ModelfileError."""
    from heron.prompt import check_template

    try:
        check_template(template)
    except ValueError as e:
        raise ModelfileError(f"TEMPLATE: {e}") from None


def _create(
    store: ModelStore,
    target: ModelName,
    mf: Modelfile,
    base_dir: Path | None,
    files: dict[str, str],
    adapters: dict[str, str],
) -> Iterator[Status]:
    yield {"status": "parsing modelfile"}
    base: StoredModel | None = None
    weights: list[Layer]
    config: dict[str, Any] | None
    if files:
        weights, config = yield from _from_files(store, files)
    else:
        source = _resolve_from(store, mf.from_, base_dir)
        if isinstance(source, Path):
            weights, config = yield from _from_path(store, source)
        else:
            base = source
            weights = [x for x in base.manifest.layers if x.media_type not in _TEXT_MEDIA]
            for layer in [*weights, base.manifest.config]:
                yield _status(layer.digest, created=False)
            config = None
    weights = yield from with_adapter(store.blobs, weights, mf.adapters, base_dir, adapters)
    if config is not None:
        config_layer = yield from _put(store, _json_bytes(config), MEDIA_CONFIG)
    else:
        assert base is not None
        config_layer = base.manifest.config

    params = dict(base.parameters) if base else {}
    params.update(mf.parameter_dict())
    template = mf.template if mf.template is not None else (base.template if base else None)
    system = mf.system if mf.system is not None else (base.system if base else None)
    messages = mf.messages or (base.messages if base else [])
    licenses = mf.license or (base.license if base else [])

    layers = list(weights)
    if template is not None:
        layers.append((yield from _put(store, template.encode(), MEDIA_TEMPLATE)))
    if system is not None:
        layers.append((yield from _put(store, system.encode(), MEDIA_SYSTEM)))
    if params:
        layers.append((yield from _put(store, _json_bytes(params), MEDIA_PARAMS)))
    if messages:
        layers.append((yield from _put(store, _json_bytes(messages), MEDIA_MESSAGES)))
    for text in licenses:
        layers.append((yield from _put(store, text.encode(), MEDIA_LICENSE)))

    yield {"status": "writing manifest"}
    store.write_manifest(target, Manifest(config_layer, tuple(layers)))
    yield {"status": "success"}


def _status(digest: str, created: bool) -> Status:
    return {"status": f"{'creating new' if created else 'using existing'} layer {digest}"}


def _json_bytes(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode()


def _put(store: ModelStore, data: bytes, media_type: str) -> Generator[Status, None, Layer]:
    """Store a small blob (config or text layer) and yield its status; returns its Layer."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with store.blobs.writer(expected=digest, size=len(data)) as w:
        created = not w.done
        if created:
            w.write(data)
        w.commit()
    yield _status(digest, created)
    return Layer(media_type, digest, len(data))


def _resolve_from(store: ModelStore, text: str, base_dir: Path | None) -> StoredModel | Path:
    """FROM as a path (only with ``base_dir``) or as a model already in the store."""
    text = text.strip()
    if not text:
        raise CreateError("FROM is empty")
    if base_dir is not None:
        candidate = Path(os.path.expanduser(text))
        if not candidate.is_absolute():
            candidate = Path(base_dir) / candidate
        if text.startswith(("/", "./", "../", "~")) or candidate.exists():
            if not candidate.exists():
                raise CreateError(f"FROM {text!r}: no such file or directory")
            return candidate
    try:
        name = parse_name(text)
    except InvalidNameError as e:
        raise CreateError(f"FROM {text[:80]!r} is not a model name: {e}") from None
    try:
        return store.get(name)
    except ModelNotFoundError:
        raise ModelNotFoundError(
            f"base model {name.display!r} not found; pull or create it first"
        ) from None


# -- GGUF --------------------------------------------------------------------------------------


def _gguf_config(path: Path, label: str) -> dict[str, Any]:
    """Validate with Heron's GGUF parser; the config blob's fields."""
    import gguf

    from heron.loader.gguf import GGUFError, GGUFFile

    try:
        with GGUFFile(path) as g:
            arch = g.architecture
            file_type = g.metadata.get("general.file_type")
    except GGUFError as e:
        detail = str(e).replace(f"{path}: ", "")
        raise CreateError(f"{label}: not a valid GGUF file: {detail}") from None
    ftype: str | None = None
    if isinstance(file_type, int):
        try:
            ftype = gguf.LlamaFileType(file_type).name.removeprefix("MOSTLY_")
        except ValueError:
            ftype = str(file_type)
    return _config("gguf", arch, ftype)


def _config(fmt: str, family: str | None, file_type: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {"model_format": fmt, "model_family": family}
    out["model_families"] = [family] if family else None
    out["file_type"] = file_type
    return out


# -- HF directories ----------------------------------------------------------------------------


def _check_safetensors(path: Path, label: str) -> None:
    """Bounds-check a safetensors header: length, JSON, every tensor's byte range."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(8)
            if len(head) < 8:
                raise CreateError(f"{label}: truncated safetensors file")
            (n,) = struct.unpack("<Q", head)
            if n > MAX_SAFETENSORS_HEADER or n > size - 8:
                raise CreateError(f"{label}: safetensors header length {n} is out of bounds")
            header = json.loads(f.read(n).decode("utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CreateError(f"{label}: unreadable safetensors header: {e}") from None
    if not isinstance(header, dict):
        raise CreateError(f"{label}: safetensors header is not an object")
    data_bytes = size - 8 - n
    for key, info in header.items():
        if key == "__metadata__":
            continue
        offsets = info.get("data_offsets") if isinstance(info, dict) else None
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(isinstance(x, int) and not isinstance(x, bool) for x in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_bytes
        ):
            raise CreateError(f"{label}: tensor {str(key)[:80]!r} has bad data_offsets")


def _hf_config(config_path: Path, label: str) -> dict[str, Any]:
    try:
        if config_path.stat().st_size > MAX_CONFIG_BYTES:
            raise CreateError(f"{label}: config.json is too large")
        cfg = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
        raise CreateError(f"{label}: unreadable config.json: {e}") from None
    if not isinstance(cfg, dict):
        raise CreateError(f"{label}: config.json is not an object")
    family = cfg.get("model_type")
    dtype = cfg.get("torch_dtype") or cfg.get("dtype")
    file_type = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}.get(str(dtype))
    return _config("safetensors", family if isinstance(family, str) else None, file_type)


def _check_hf_names(names: list[str], label: str) -> None:
    pickles = [n for n in names if n.lower().endswith(PICKLE_SUFFIXES)]
    if "config.json" not in names:
        raise CreateError(f"{label}: no config.json")
    if not any(n.endswith(".safetensors") for n in names):
        if pickles:
            raise CreateError(
                f"{label}: only pickle checkpoints ({', '.join(pickles[:3])}); they can run code "
                "when loaded and are refused. Convert the model to safetensors."
            )
        raise CreateError(f"{label}: no .safetensors files")


def _hf_files(directory: Path) -> list[tuple[str, Path]]:
    """(layer name, path) of the files to keep: top level and one directory down, no hidden
    entries, known suffixes only; pickles are left out. A symlink must resolve to a regular file
    inside the directory (or, for a Hugging Face cache snapshot, inside that repo's cache)."""
    root = directory.resolve()
    allowed = root.parent.parent if root.parent.name == "snapshots" else root
    out: list[tuple[str, Path]] = []
    pickles: list[str] = []

    def scan(d: Path, prefix: str) -> None:
        with os.scandir(d) as it:
            entries = sorted(it, key=lambda e: e.name)
        for entry in entries:
            if entry.name.startswith("."):
                continue
            rel = prefix + entry.name
            if entry.is_dir(follow_symlinks=False):
                if not prefix:
                    scan(Path(entry.path), rel + "/")
                continue
            if rel.lower().endswith(PICKLE_SUFFIXES):
                pickles.append(rel)
                continue
            if not rel.endswith(HF_SUFFIXES):
                continue
            real = Path(entry.path).resolve()
            if not real.is_relative_to(allowed) or not real.is_file():
                raise CreateError(f"{directory}: {rel} links outside the model directory")
            try:
                check_layer_name(rel)
            except ManifestError as e:
                raise CreateError(f"{directory}: {e}") from None
            out.append((rel, Path(entry.path)))

    scan(directory, "")
    _check_hf_names([n for n, _ in out] + pickles, str(directory))
    return out


# -- sources -------------------------------------------------------------------------------------


def _from_path(store: ModelStore, path: Path) -> Weights:
    """Import a local GGUF file or HF directory; returns (weight layers, config)."""
    if path.is_dir():
        found = _hf_files(path)
        config = _hf_config(dict(found)["config.json"], str(path))
        for name, file in found:
            if name.endswith(".safetensors"):
                _check_safetensors(file, f"{path}/{name}")
        layers = []
        for name, file in found:
            # NOTE: copies (or reflinks), never hard links: the owner may rewrite these files.
            digest, created = store.blobs.place_file(file, link=False)
            yield _status(digest, created)
            layers.append(Layer(MEDIA_FILE, digest, store.blobs.size(digest), name))
        return layers, config
    if not path.is_file():
        raise CreateError(f"{path}: not a regular file or directory")
    config = _gguf_config(path, str(path))
    digest, created = store.blobs.place_file(path, link=False)
    yield _status(digest, created)
    return [Layer(MEDIA_MODEL, digest, store.blobs.size(digest))], config


def _from_files(store: ModelStore, files: dict[str, str]) -> Weights:
    """Weight layers from uploaded blobs; returns (weight layers, config)."""
    for name, digest in files.items():
        if not store.blobs.has(digest):
            raise CreateError(f"files: blob {digest} ({name}) is not in the store; upload it first")
    ggufs = [n for n in files if n.lower().endswith(".gguf")]
    if ggufs:
        if len(files) != 1:
            raise CreateError("files: a GGUF model is one .gguf file and nothing else")
        digest = files[ggufs[0]]
        config = _gguf_config(store.blobs.path(digest), ggufs[0])
        yield _status(digest, created=False)
        return [Layer(MEDIA_MODEL, digest, store.blobs.size(digest))], config
    names = list(files)
    _check_hf_names(names, "files")
    for name in names:
        if name.lower().endswith(PICKLE_SUFFIXES):
            raise CreateError(f"files: {name} is a pickle checkpoint; it is refused")
        if name.endswith(".safetensors"):
            _check_safetensors(store.blobs.path(files[name]), name)
    config = _hf_config(store.blobs.path(files["config.json"]), "files")
    layers = []
    for name, digest in files.items():
        yield _status(digest, created=False)
        layers.append(Layer(MEDIA_FILE, digest, store.blobs.size(digest), name))
    return layers, config
