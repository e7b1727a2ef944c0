"""One chat turn against a server's ``/api/chat``, shared by ``heron run``'s one-shot prompt
(``run.py``) and its interactive session (``repl.py``)."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass
from typing import Any, TextIO

from heron.cli.client import Client
from heron.cli.display import stats_lines


@dataclass(slots=True)
class Reply:
    """One streamed reply: its text, the final NDJSON chunk (statistics) and the time to the
    first token as the client saw it."""

    text: str
    final: dict[str, Any] | None
    ttft_s: float | None


def stream_chat(client: Client, body: dict[str, Any], out: TextIO) -> Reply:
    """POST ``/api/chat`` and write the reply to ``out`` as it streams."""
    start = time.perf_counter()
    parts: list[str] = []
    final: dict[str, Any] | None = None
    ttft: float | None = None
    for item in client.stream("/api/chat", body):
        content = (item.get("message") or {}).get("content") or ""
        if content:
            if ttft is None:
                ttft = time.perf_counter() - start
            out.write(content)
            out.flush()
            parts.append(content)
        if item.get("done"):
            final = item
    return Reply("".join(parts), final, ttft)


def print_stats(reply: Reply) -> None:
    if reply.final is not None:
        print("\n".join(stats_lines(reply.final, reply.ttft_s)), file=sys.stderr, flush=True)


def chat_body(
    model: str, messages: list[dict[str, str]], options: dict[str, Any], keepalive: str | None
) -> dict[str, Any]:
    body: dict[str, Any] = {"model": model, "messages": messages, "stream": True}
    if options:
        body["options"] = options
    if keepalive is not None:
        body["keep_alive"] = keepalive
    return body
