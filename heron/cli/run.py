"""``heron run MODEL [PROMPT]``: start a local server if none answers, pull the model if the
server lacks it, then answer one prompt (the argument, piped stdin, or both) or open the
interactive REPL (``repl.py``)."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from heron.cli.chat import chat_body, print_stats, stream_chat
from heron.cli.client import Client, ServerError, cli_errors
from heron.cli.launch import ensure_server
from heron.cli.models import pull_model


def compose_prompt(argument: str | None, piped: str | None) -> str | None:
    """The one-shot prompt: the argument, piped stdin, or both joined by a blank line; None
    when neither was given."""
    parts = [p for p in (argument, piped.rstrip("\n") if piped else None) if p]
    return "\n\n".join(parts) if parts else None


def ensure_model(client: Client, model: str) -> None:
    """Pull ``model`` (with the progress display) unless the server already has it."""
    try:
        client.show(model)
    except ServerError as exc:
        if exc.status != 404:
            raise
        pull_model(client, model)


@cli_errors
def run(
    model: Annotated[str, typer.Argument(help="Model to run, e.g. smollm2.")],
    prompt: Annotated[
        list[str] | None,
        typer.Argument(
            help="One-shot prompt; without it (and without piped "
            "stdin) an interactive session starts."
        ),
    ] = None,
    verbose: Annotated[
        bool, typer.Option("--verbose", help="Print timings and token rates after each reply.")
    ] = False,
    keepalive: Annotated[
        str | None,
        typer.Option("--keepalive", help='How long the model stays loaded, e.g. "5m", "1h", "-1".'),
    ] = None,
) -> None:
    """Run a model: answer one prompt, or chat interactively."""
    piped = None if sys.stdin is None or sys.stdin.isatty() else sys.stdin.read()
    text = compose_prompt(" ".join(prompt) if prompt else None, piped)
    with Client() as client, ensure_server(client, model):
        ensure_model(client, model)
        if text is not None:
            body = chat_body(model, [{"role": "user", "content": text}], {}, keepalive)
            reply = stream_chat(client, body, sys.stdout)
            sys.stdout.write("\n")
            sys.stdout.flush()
            if verbose:
                print_stats(reply)
        elif piped is not None:  # empty stdin: just load the model, as an empty prompt does
            client.send(
                "POST", "/api/chat", chat_body(model, [], {}, keepalive) | {"stream": False}
            )
        else:
            from heron.cli.repl import Session

            Session(client, model, verbose=verbose, keepalive=keepalive).loop()
