"""Model verbs: ``pull``, ``list``/``ls``, ``ps``, ``rm``, ``show``, ``cp`` and ``stop``. Each is a
thin layer over one or two API calls; ``create`` lives in ``create.py``."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from heron.cli.client import Client, ServerError, cli_errors
from heron.cli.display import TransferProgress, human_bytes, human_time, parse_time, table


def pull_model(client: Client, model: str) -> None:
    """Stream ``/api/pull`` through the progress display; raises ``ServerError`` on failure."""
    with TransferProgress() as progress:
        for item in client.stream("/api/pull", {"model": model, "stream": True}):
            progress.update(item)


@cli_errors
def pull(model: Annotated[str, typer.Argument(help="Model to pull, e.g. smollm2.")]) -> None:
    """Pull a model into the server's store."""
    with Client() as client:
        pull_model(client, model)


def _short_id(digest: str) -> str:
    return digest.removeprefix("sha256:")[:12]


@cli_errors
def list_() -> None:
    """List the models in the store."""
    with Client() as client:
        models = client.json("GET", "/api/tags").get("models") or []
    rows = [
        (
            m.get("name") or m.get("model", ""),
            _short_id(m.get("digest", "")),
            human_bytes(int(m.get("size") or 0)),
            human_time(parse_time(m.get("modified_at", ""))),
        )
        for m in models
    ]
    typer.echo(table(("NAME", "ID", "SIZE", "MODIFIED"), rows))


def _processor(size: int, size_vram: int) -> str:
    if size_vram <= 0 or size <= 0:
        return "100% CPU"
    if size_vram >= size:
        return "100% GPU"
    gpu = round(100 * size_vram / size)
    return f"{100 - gpu}%/{gpu}% CPU/GPU"


def _until(expires_at: str) -> str:
    when = parse_time(expires_at)
    text = human_time(when)
    return "Stopping..." if text.endswith(" ago") else text


@cli_errors
def ps() -> None:
    """List the loaded models, their size and when they unload."""
    with Client() as client:
        models = client.json("GET", "/api/ps").get("models") or []
    rows = []
    for m in models:
        size = int(m.get("size") or 0)
        rows.append(
            (
                m.get("name") or m.get("model", ""),
                _short_id(m.get("digest", "")),
                human_bytes(size),
                _processor(size, int(m.get("size_vram") or 0)),
                str(m.get("context_length") or ""),
                _until(m.get("expires_at", "")),
            )
        )
    typer.echo(table(("NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"), rows))


def _tagged(name: str) -> str:
    name = name.lower()
    return name if ":" in name.rsplit("/", 1)[-1] else f"{name}:latest"


def is_loaded(client: Client, model: str) -> bool:
    """Whether ``/api/ps`` lists ``model`` (``:latest`` is the default tag)."""
    running = client.json("GET", "/api/ps").get("models") or []
    names = {_tagged(str(m.get("name") or m.get("model") or "")) for m in running}
    return _tagged(model) in names


def unload(client: Client, model: str) -> None:
    """Ask the server to unload ``model`` now (an empty prompt with ``keep_alive`` 0)."""
    body = {"model": model, "prompt": "", "keep_alive": 0, "stream": False}
    client.send("POST", "/api/generate", body)


@cli_errors
def rm(models: Annotated[list[str], typer.Argument(help="Models to remove.")]) -> None:
    """Remove models from the store."""
    with Client() as client:
        for model in models:
            if is_loaded(client, model):
                unload(client, model)  # a loaded model is stopped first, as Ollama does
            client.send("DELETE", "/api/delete", {"model": model})
            typer.echo(f"deleted '{model}'")


@cli_errors
def cp(
    source: Annotated[str, typer.Argument(help="Existing model.")],
    destination: Annotated[str, typer.Argument(help="New name.")],
) -> None:
    """Copy a model to a new name (no data is duplicated)."""
    with Client() as client:
        client.send("POST", "/api/copy", {"source": source, "destination": destination})
    typer.echo(f"copied '{source}' to '{destination}'")


@cli_errors
def stop(model: Annotated[str, typer.Argument(help="Loaded model to unload.")]) -> None:
    """Unload a running model."""
    with Client() as client:
        if not is_loaded(client, model):
            raise ServerError(f'couldn\'t find model "{model}" to stop')
        unload(client, model)


# ------------------------------------------------------------------------------- show
def parameter_lines(text: str | None) -> list[tuple[str, str]]:
    """``/api/show``'s ``parameters`` text (``name   value`` lines) as pairs."""
    pairs = []
    for line in (text or "").splitlines():
        name, _, value = line.strip().partition(" ")
        if name:
            pairs.append((name, value.strip()))
    return pairs


def summary(info: dict[str, Any]) -> str:
    """The default ``show`` output: model facts, then capabilities, parameters, system and
    license sections."""
    details = info.get("details") or {}
    model_info = info.get("model_info") or {}
    arch = str(model_info.get("general.architecture") or details.get("family") or "")
    facts = [
        ("architecture", arch),
        ("parameters", str(details.get("parameter_size") or "")),
        ("context length", str(model_info.get(f"{arch}.context_length") or "")),
        ("embedding length", str(model_info.get(f"{arch}.embedding_length") or "")),
        ("quantization", str(details.get("quantization_level") or "")),
    ]
    sections: list[tuple[str, list[tuple[str, str]]]] = [("Model", [(k, v) for k, v in facts if v])]
    capabilities = info.get("capabilities") or []
    if capabilities:
        sections.append(("Capabilities", [(str(c), "") for c in capabilities]))
    modelfile = str(info.get("modelfile") or "").splitlines()
    adapters = [line.removeprefix("ADAPTER ") for line in modelfile if line.startswith("ADAPTER ")]
    if adapters:
        sections.append(("Adapters", [(a, "") for a in adapters]))
    params = parameter_lines(info.get("parameters"))
    if params:
        sections.append(("Parameters", params))
    system = (info.get("system") or "").strip()
    if system:
        sections.append(("System", _excerpt(system)))
    license_text = (info.get("license") or "").strip()
    if license_text:
        sections.append(("License", _excerpt(license_text)))
    out: list[str] = []
    for title, rows in sections:
        width = max(len(k) for k, _ in rows) if rows else 0
        out.append(f"  {title}")
        out += [f"    {k.ljust(width)}    {v}".rstrip() for k, v in rows]
        out.append("")
    return "\n".join(out)


def _excerpt(text: str, num_lines: int = 2) -> list[tuple[str, str]]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    shown = [(line, "") for line in lines[:num_lines]]
    if len(lines) > num_lines:
        shown.append(("...", ""))
    return shown


@cli_errors
def show(
    model: Annotated[str, typer.Argument(help="Model to describe.")],
    modelfile: Annotated[bool, typer.Option("--modelfile", help="Show its Modelfile.")] = False,
    parameters: Annotated[bool, typer.Option("--parameters", help="Show its parameters.")] = False,
    template: Annotated[bool, typer.Option("--template", help="Show its template.")] = False,
    system: Annotated[bool, typer.Option("--system", help="Show its system message.")] = False,
    license: Annotated[bool, typer.Option("--license", help="Show its license.")] = False,
) -> None:
    """Show a model's details, Modelfile, parameters, template, system message or license."""
    chosen = [
        key
        for key, flag in (
            ("modelfile", modelfile),
            ("parameters", parameters),
            ("template", template),
            ("system", system),
            ("license", license),
        )
        if flag
    ]
    if len(chosen) > 1:
        raise typer.BadParameter(
            "choose one of --modelfile, --parameters, --template, --system and --license"
        )
    with Client() as client:
        info = client.show(model)
    if not chosen:
        typer.echo(summary(info))
        return
    key = chosen[0]
    value = info.get(key) or ""
    if key == "license" and isinstance(value, list):
        value = "\n".join(str(v) for v in value)
    if not value and key == "system":
        typer.echo("No system message was specified for this model.", err=True)
        return
    typer.echo(str(value).rstrip("\n"))
