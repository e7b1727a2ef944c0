"""Helpers every API family shares: error responses, SSE framing, disconnect handling."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar

from fastapi import Request
from fastapi.responses import JSONResponse

T = TypeVar("T")

# Inputs up to this many characters are tokenized on the event loop: a thread hop costs more
# (about half a millisecond, on a one-user request's time to first token) than encoding them.
INLINE_TEXT_CHARS = 4096


def text_size(obj: Any, limit: int = INLINE_TEXT_CHARS) -> int:
    """Characters of text in ``obj`` (strings inside dicts, lists and tuples; any other item,
    such as a token id, counts 1), counted until ``limit`` is passed."""
    total = 0
    stack = [obj]
    while stack and total <= limit:
        item = stack.pop()
        if isinstance(item, str):
            total += len(item)
        elif isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
        elif hasattr(item, "model_dump"):  # a pydantic message
            stack.append(item.model_dump())
        else:
            total += 1  # a token id or another scalar: work per item all the same
    return total


async def tokenize(fn: Callable[..., T], text: Any, *args: Any) -> T:
    """``fn(*args)``, where ``text`` is the input it tokenizes: inline for short text, on a
    worker thread for long text so that the event loop keeps serving other requests."""
    if text_size(text) <= INLINE_TEXT_CHARS:
        return fn(*args)
    return await asyncio.to_thread(fn, *args)


class APIError(Exception):
    """An error with an HTTP status that each API family renders in its own shape.

    ``kind`` is a neutral category mapped per family: invalid_request, authentication,
    permission, not_found, request_too_large, overloaded, server_error, context_length."""

    def __init__(
        self,
        status: int,
        message: str,
        kind: str = "invalid_request",
        param: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        # Lone surrogates from user input cannot be encoded as JSON text; escape them.
        message = message.encode("utf-8", "backslashreplace").decode("utf-8")
        super().__init__(message)
        self.status = status
        self.message = message
        self.kind = kind
        self.param = param
        self.headers = headers or {}


def family_of(path: str) -> str:
    """Which API family's error shape a path uses."""
    if path.startswith("/v1/messages"):
        return "anthropic"
    if path.startswith("/api/") or path == "/api":
        return "ollama"
    return "openai"


_OPENAI_TYPES = {
    "invalid_request": "invalid_request_error",
    "context_length": "invalid_request_error",
    "authentication": "invalid_request_error",
    "permission": "invalid_request_error",
    "not_found": "invalid_request_error",
    "request_too_large": "invalid_request_error",
    "overloaded": "server_error",
    "server_error": "server_error",
}
_OPENAI_CODES = {
    "context_length": "context_length_exceeded",
    "authentication": "invalid_api_key",
    "not_found": "model_not_found",
}
_ANTHROPIC_TYPES = {
    "invalid_request": "invalid_request_error",
    "context_length": "invalid_request_error",
    "authentication": "authentication_error",
    "permission": "permission_error",
    "not_found": "not_found_error",
    "request_too_large": "request_too_large",
    "overloaded": "overloaded_error",
    "server_error": "api_error",
}


def error_body(family: str, err: APIError) -> dict[str, Any]:
    if family == "anthropic":
        return {
            "type": "error",
            "error": {"type": _ANTHROPIC_TYPES.get(err.kind, "api_error"), "message": err.message},
        }
    if family == "ollama":
        return {"error": err.message}
    return {
        "error": {
            "message": err.message,
            "type": _OPENAI_TYPES.get(err.kind, "invalid_request_error"),
            "param": err.param,
            "code": _OPENAI_CODES.get(err.kind),
        }
    }


def error_response(family: str, err: APIError) -> JSONResponse:
    return JSONResponse(error_body(family, err), status_code=err.status, headers=err.headers)


def sse(data: Any, event: str | None = None) -> bytes:
    """One server-sent event. ``data`` is JSON-encoded unless it is already a string."""
    payload = data if isinstance(data, str) else json.dumps(data, separators=(",", ":"))
    head = f"event: {event}\n" if event else ""
    return f"{head}data: {payload}\n\n".encode()


def ndjson(data: Any) -> bytes:
    return (json.dumps(data, separators=(",", ":")) + "\n").encode()


async def until_disconnected(request: Request, work: Awaitable[T]) -> T:
    """Run ``work`` (a non-streaming generation) but cancel it if the client goes away,
    so that its engine request is aborted and its KV blocks freed. Raises
    ``asyncio.CancelledError`` in that case."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        while not task.done():
            message = await request.receive()
            if message["type"] == "http.disconnect":
                task.cancel()
                return

    watcher = asyncio.ensure_future(watch())
    try:
        return await task
    finally:
        watcher.cancel()


async def collect(stream: AsyncIterator[T]) -> list[T]:
    return [item async for item in stream]


Handler = Callable[..., Awaitable[Any]]
