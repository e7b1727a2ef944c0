"""``heron create MODEL -f Modelfile``: parse the Modelfile here, upload the files its FROM names
(a GGUF file, or every file of an HF safetensors directory) and its ADAPTER's (a GGUF LoRA
file, or a PEFT directory's two files) as blobs the server lacks, then ask ``/api/create`` to
build the model from those digests (or from a model name)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from heron.cli.client import Client, CLIError, cli_errors
from heron.cli.display import TransferProgress

if TYPE_CHECKING:
    from heron.store.modelfile import Modelfile

CHUNK_BYTES = 1 << 20
GGUF_MAGIC = b"GGUF"
_PATH_PREFIXES = ("/", "./", "../", "~", ".\\", "..\\")


def from_path(value: str, base_dir: Path) -> Path | None:
    """The local file or directory FROM names (relative to the Modelfile's directory), or None
    when FROM is a model name. A path-like FROM that does not exist is an error."""
    path = Path(value).expanduser()
    if not path.is_absolute():
        path = base_dir / path
    if path.exists():
        return path
    if value.startswith(_PATH_PREFIXES) or value.lower().endswith((".gguf", ".safetensors")):
        raise CLIError(f"FROM {value}: no such file or directory ({path})")
    return None


def model_files(path: Path) -> dict[str, Path]:
    """Upload name -> file: a GGUF file by its base name, or every regular file of a directory
    by its path relative to it (``config.json``, ``1_Pooling/config.json``). Hidden files and
    folders (``.git``, ``.cache``) are left out."""
    if path.is_file():
        with path.open("rb") as f:
            if f.read(4) != GGUF_MAGIC:
                raise CLIError(f"FROM {path}: not a GGUF file (or an HF safetensors directory)")
        return {path.name: path}
    files: dict[str, Path] = {}
    for root, dirs, names in os.walk(path):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            file = Path(root, name)
            if not name.startswith(".") and file.is_file():
                files[file.relative_to(path).as_posix()] = file
    if not files:
        raise CLIError(f"FROM {path}: the directory holds no files")
    return files


def _hash(file: Path, progress: TransferProgress, label: str) -> str:
    digest = hashlib.sha256()
    size = file.stat().st_size
    done = 0
    with file.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
            done += len(chunk)
            progress.bar(f"hash:{label}", f"hashing {label}", size, done)
    if size == 0:
        progress.bar(f"hash:{label}", f"hashing {label}", 1, 1)
    return f"sha256:{digest.hexdigest()}"


def _chunks(file: Path, progress: TransferProgress, key: str, label: str) -> Iterator[bytes]:
    size = file.stat().st_size
    done = 0
    with file.open("rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            done += len(chunk)
            progress.bar(key, label, size, done)
            yield chunk


def upload_files(
    client: Client, files: dict[str, Path], progress: TransferProgress
) -> dict[str, str]:
    """Hash each file and upload those the server does not hold; returns name -> digest."""
    digests: dict[str, str] = {}
    for name, file in files.items():
        digest = _hash(file, progress, name)
        if not client.has_blob(digest):
            label = f"copying file {digest.removeprefix('sha256:')[:12]}"
            size = file.stat().st_size
            client.upload_blob(digest, _chunks(file, progress, f"up:{name}", label), size)
        digests[name] = digest
    return digests


def request_body(
    model: str,
    modelfile: Modelfile,
    files: dict[str, str] | None,
    adapters: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The ``/api/create`` request for a parsed Modelfile: ``files`` when FROM was local,
    else ``from``; ``adapters`` the uploaded ADAPTER. Parameters go as an object (``stop`` a
    list; otherwise the last one wins)."""
    body: dict[str, Any] = {"model": model, "stream": True}
    if files is not None:
        body["files"] = files
    else:
        body["from"] = modelfile.from_
    if adapters:
        body["adapters"] = adapters
    if modelfile.template is not None:
        body["template"] = modelfile.template
    if modelfile.system is not None:
        body["system"] = modelfile.system
    if modelfile.license:
        body["license"] = list(modelfile.license)
    parameters = modelfile.parameter_dict()
    if parameters:
        body["parameters"] = parameters
    if modelfile.messages:
        body["messages"] = [dict(m) for m in modelfile.messages]
    return body


def read_modelfile(path: Path) -> Modelfile:
    from heron.store.modelfile import ModelfileError, parse_modelfile

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise CLIError(f"could not read the Modelfile {path}: {exc.strerror or exc}") from None
    try:
        modelfile = parse_modelfile(text)
    except ModelfileError as exc:
        raise CLIError(f"{path}: {exc}") from None
    if len(modelfile.adapters) > 1:
        raise CLIError("one ADAPTER per model: Heron runs a model with one LoRA adapter")
    return modelfile


def adapter_upload(modelfile: Modelfile, base_dir: Path) -> dict[str, Path]:
    """The files of the Modelfile's ADAPTER (relative to its directory) by upload name."""
    from heron.store.adapters import AdapterError, adapter_files

    if not modelfile.adapters:
        return {}
    path = Path(modelfile.adapters[0]).expanduser()
    try:
        return adapter_files(path if path.is_absolute() else base_dir / path)
    except AdapterError as exc:
        raise CLIError(str(exc)) from None


@cli_errors
def create(
    model: Annotated[str, typer.Argument(help="Name of the new model.")],
    file: Annotated[
        Path, typer.Option("--file", "-f", help="The Modelfile (default: ./Modelfile).")
    ] = Path("Modelfile"),
) -> None:
    """Create a model from a Modelfile."""
    modelfile = read_modelfile(file)
    local = from_path(modelfile.from_, file.resolve().parent)
    adapter = adapter_upload(modelfile, file.resolve().parent)
    with Client() as client, TransferProgress() as progress:
        files = None
        if local is not None:
            progress.update({"status": "gathering model components"})
            files = upload_files(client, model_files(local), progress)
        adapters = upload_files(client, adapter, progress) if adapter else None
        body = request_body(model, modelfile, files, adapters)
        for item in client.stream("/api/create", body):
            progress.update(item)
