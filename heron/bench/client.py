"""One streamed chat request, timed chunk by chunk.

OpenAI API: ``POST /v1/chat/completions`` with ``stream: true``, read as server-sent events
(``data: {json}`` lines, ending ``data: [DONE]``); the token count comes from the usage chunk
that ``stream_options.include_usage`` asks for. Ollama API: ``POST /api/chat``, read as
NDJSON; the token count is ``eval_count`` of the final ``done: true`` line. Without either,
each content chunk counts as one token.

Every failure (connection refused, HTTP 4xx/5xx, an error event mid-stream, a stream cut
short, the timeout) becomes the record's ``error`` text; nothing is raised.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from heron.bench.workload import Endpoint, RequestSettings


@dataclass(slots=True)
class RequestRecord:
    """One request. Times are seconds from the start of its run (one endpoint at one level,
    one repeat); ``token_times`` holds the arrival of every chunk that carried content, so
    ``token_times[0]`` is the first token's arrival."""

    t_send: float
    t_end: float = 0.0
    token_times: list[float] = field(default_factory=list)
    usage_tokens: int | None = None  # as the server reported it
    prompt_tokens: int | None = None
    finish_reason: str | None = None
    error: str | None = None
    text: str = ""
    # Where it belongs: set by the orchestrator.
    endpoint: str = ""
    users: int = 0
    repeat: int = 0
    user: int = 0
    index: int = 0  # the user's n-th request, from 0
    turn: int = 1  # 1-based turn of a multi-turn conversation; 1 otherwise
    conversation: int = 0

    @property
    def ok(self) -> bool:
        return self.error is None

    @property
    def num_chunks(self) -> int:
        return len(self.token_times)

    @property
    def num_tokens(self) -> int:
        """Generated tokens: the server's usage count when it gave one, else the chunks."""
        return self.usage_tokens if self.usage_tokens is not None else len(self.token_times)

    @property
    def ttft(self) -> float | None:
        return self.token_times[0] - self.t_send if self.token_times else None

    @property
    def e2e(self) -> float:
        return self.t_end - self.t_send

    def to_dict(self) -> dict[str, Any]:
        return {
            "endpoint": self.endpoint,
            "users": self.users,
            "repeat": self.repeat,
            "user": self.user,
            "index": self.index,
            "conversation": self.conversation,
            "turn": self.turn,
            "ok": self.ok,
            "error": self.error,
            "t_send": round(self.t_send, 6),
            "t_end": round(self.t_end, 6),
            "token_times": [round(t, 6) for t in self.token_times],
            "num_tokens": self.num_tokens,
            "usage_tokens": self.usage_tokens,
            "prompt_tokens": self.prompt_tokens,
            "finish_reason": self.finish_reason,
            "text": self.text,
        }


@dataclass(frozen=True, slots=True)
class StreamEvent:
    """What one line of a stream says."""

    content: str = ""
    usage_tokens: int | None = None
    prompt_tokens: int | None = None
    finish_reason: str | None = None
    error: str | None = None
    done: bool = False


def _error_text(obj: Any) -> str:
    if isinstance(obj, dict):
        return str(obj.get("message") or obj.get("error") or json.dumps(obj))
    return str(obj)


def _load(data: str) -> dict[str, Any] | StreamEvent:
    try:
        obj = json.loads(data)
    except json.JSONDecodeError:
        return StreamEvent(error=f"unparsable stream line: {data[:200]!r}")
    if not isinstance(obj, dict):
        return StreamEvent(error=f"unexpected stream line: {data[:200]!r}")
    return obj


def parse_openai_line(line: str) -> StreamEvent | None:
    """A server-sent-events line of a chat completion stream; None for lines without data
    (blank lines, comments, ``event:`` fields)."""
    line = line.strip()
    if not line.startswith("data:"):
        return None
    data = line[5:].strip()
    if data == "[DONE]":
        return StreamEvent(done=True)
    obj = _load(data)
    if isinstance(obj, StreamEvent):
        return obj
    if obj.get("error") is not None:
        return StreamEvent(error=_error_text(obj["error"]))
    content: list[str] = []
    finish = None
    for choice in obj.get("choices") or []:
        delta = choice.get("delta") or {}
        if isinstance(delta.get("content"), str):
            content.append(delta["content"])
        finish = choice.get("finish_reason") or finish
    usage = obj.get("usage") or {}
    return StreamEvent(
        content="".join(content),
        usage_tokens=usage.get("completion_tokens"),
        prompt_tokens=usage.get("prompt_tokens"),
        finish_reason=finish,
    )


def parse_ollama_line(line: str) -> StreamEvent | None:
    """An NDJSON line of an Ollama ``/api/chat`` stream; None for blank lines."""
    line = line.strip()
    if not line:
        return None
    obj = _load(line)
    if isinstance(obj, StreamEvent):
        return obj
    if obj.get("error") is not None:
        return StreamEvent(error=_error_text(obj["error"]))
    message = obj.get("message") or {}
    content = message.get("content")
    content = content if isinstance(content, str) else ""
    if not obj.get("done"):
        return StreamEvent(content=content)
    return StreamEvent(
        content=content,
        usage_tokens=obj.get("eval_count"),
        prompt_tokens=obj.get("prompt_eval_count"),
        finish_reason=obj.get("done_reason") or "stop",
        done=True,
    )


def _snippet(raw: bytes, limit: int = 300) -> str:
    text = raw.decode("utf-8", "replace").strip()
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        return text[:limit]
    if isinstance(obj, dict) and obj.get("error") is not None:
        return _error_text(obj["error"])[:limit]
    return text[:limit]


async def stream_chat(
    client: httpx.AsyncClient,
    endpoint: Endpoint,
    settings: RequestSettings,
    messages: list[dict[str, str]],
    t0: float,
) -> RequestRecord:
    """Send one streamed chat request and time it; times are ``time.perf_counter() - t0``.
    Never raises for a failed request (only on cancellation)."""
    parse = parse_ollama_line if endpoint.api == "ollama" else parse_openai_line
    headers = {"Authorization": f"Bearer {settings.api_key}"} if settings.api_key else {}
    body = settings.body(endpoint.api, messages)
    record = RequestRecord(t_send=time.perf_counter() - t0)
    parts: list[str] = []
    try:
        async with asyncio.timeout(settings.timeout):
            await _read(client, endpoint, body, headers, parse, record, parts, t0)
    except TimeoutError:
        record.error = f"timed out after {settings.timeout:g} s"
    except httpx.HTTPError as exc:
        record.error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    record.t_end = time.perf_counter() - t0
    record.text = "".join(parts)
    return record


async def _read(
    client: httpx.AsyncClient,
    endpoint: Endpoint,
    body: dict[str, Any],
    headers: dict[str, str],
    parse: Callable[[str], StreamEvent | None],
    record: RequestRecord,
    parts: list[str],
    t0: float,
) -> None:
    async with client.stream("POST", endpoint.chat_url, json=body, headers=headers) as response:
        if response.status_code != 200:
            record.error = f"HTTP {response.status_code}: {_snippet(await response.aread())}"
            return
        done = False
        async for line in response.aiter_lines():
            event = parse(line)
            if event is None:
                continue
            if event.content:
                record.token_times.append(time.perf_counter() - t0)
                parts.append(event.content)
            if event.usage_tokens is not None:
                record.usage_tokens = int(event.usage_tokens)
            if event.prompt_tokens is not None:
                record.prompt_tokens = int(event.prompt_tokens)
            if event.finish_reason is not None:
                record.finish_reason = event.finish_reason
            if event.error is not None:
                record.error = event.error
                return
            if event.done:
                done = True
                break
        if not done and record.finish_reason is None:
            record.error = "stream ended before the response was complete"
