"""``heron import``: bring models from an existing Ollama store into Heron's store.

Unlike the other verbs this works on the local store (``HERON_MODELS``) directly, not through
a server: hard links (or reflinks) need both stores on this machine's disk, and no bytes go
over HTTP. Every blob is hashed against its digest before it is linked in. A running server
lists the imported models at once (it reads the store on each request).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import typer


def _default_ollama_dir() -> Path:
    value = os.environ.get("OLLAMA_MODELS")
    return Path(value).expanduser() if value else Path.home() / ".ollama" / "models"


def import_(
    models: Annotated[
        list[str] | None, typer.Argument(help="Models to import (default: all of them).")
    ] = None,
    source: Annotated[
        Path | None,
        typer.Option(
            "--from",
            help="Ollama's model directory (default: $OLLAMA_MODELS, else ~/.ollama/models).",
        ),
    ] = None,
) -> None:
    """Import models from an Ollama store (verified, hard-linked where possible)."""
    from heron.store.ollama_import import import_ollama
    from heron.store.store import ModelStore

    root = source or _default_ollama_dir()
    failures: list[str] = []

    def on_error(name: str, exc: Exception) -> None:
        failures.append(name)
        typer.echo(f"Error: {name}: {exc}", err=True)

    try:
        imported = import_ollama(ModelStore(), root, models or None, on_error=on_error)
    except (FileNotFoundError, ValueError) as exc:
        typer.echo(f"Error: {exc}", err=True)
        raise typer.Exit(1) from None
    for name in imported:
        typer.echo(f"imported '{name}'")
    if not imported and not failures:
        typer.echo(f"no models found in {root}")
    if failures:
        raise typer.Exit(1)
