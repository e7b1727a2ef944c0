"""The HTTP client behind every ``heron`` verb but ``serve``: Heron's Ollama-compatible API on the
server at ``HERON_HOST``, authenticated with ``HERON_API_KEY`` when it is set.

Failures become ``ServerError`` with a message fit for the user; ``cli_errors`` turns any
``CLIError`` into ``Error: ...`` on stderr and exit status 1, as Ollama's CLI does.
"""

from __future__ import annotations

import functools
import json
import sys
from collections.abc import Callable, Iterable, Iterator
from typing import Any, ParamSpec, TypeVar

import httpx
import typer

from heron import env

_P = ParamSpec("_P")
_R = TypeVar("_R")

CONNECT_TIMEOUT_S = 5.0


class CLIError(Exception):
    """A failure to report as ``Error: message`` with exit status 1."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class ServerError(CLIError):
    """A request failed. ``status`` is the HTTP status, or None when no reply came."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class NotRunningError(ServerError):
    """Nothing answered at ``HERON_HOST``."""


def base_url(host: str | None = None) -> str:
    """``http://host:port`` for ``HERON_HOST`` (``host``, ``host:port`` or ``scheme://host:port``)."""
    value = host if host is not None else env.host()
    scheme = value.split("://", 1)[0].lower() if "://" in value else "http"
    name, port = env.split_host_port(value)
    if ":" in name:
        name = f"[{name}]"  # IPv6
    return f"{scheme}://{name}:{port}"


class Client:
    """One connection pool to the server. Every method raises ``ServerError`` on failure."""

    def __init__(self, host: str | None = None) -> None:
        self.base_url = base_url(host)
        key = env.api_key()
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        # No read timeout: a model load or a long reply may keep the server quiet for minutes.
        timeout = httpx.Timeout(None, connect=CONNECT_TIMEOUT_S)
        self.http = httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ------------------------------------------------------------------------- plumbing
    def not_running(self) -> NotRunningError:
        return NotRunningError(
            f"could not connect to a running Heron server at {self.base_url}; "
            "start one with `heron serve`"
        )

    def send(self, method: str, path: str, body: Any = None, **kw: Any) -> httpx.Response:
        """One request; a 4xx/5xx reply raises ``ServerError`` with the server's message."""
        try:
            response = self.http.request(method, path, json=body, **kw)
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None
        if response.status_code >= 400:
            raise _error_of(response)
        return response

    def json(self, method: str, path: str, body: Any = None) -> Any:
        response = self.send(method, path, body)
        return response.json() if response.content else {}

    def stream(self, path: str, body: dict[str, Any]) -> Iterator[dict[str, Any]]:
        """POST ``body`` and yield each NDJSON line; an ``{"error"}`` line raises."""
        try:
            with self.http.stream("POST", path, json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    raise _error_of(response)
                for line in response.iter_lines():
                    if not line.strip():
                        continue
                    item = json.loads(line)
                    if isinstance(item, dict) and item.get("error"):
                        raise ServerError(str(item["error"]), response.status_code)
                    yield item
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None

    def _transport_error(self, exc: httpx.TransportError) -> ServerError:
        if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
            return self.not_running()
        return ServerError(f"lost the connection to {self.base_url}: {exc}")

    # ------------------------------------------------------------------------- the API
    def is_running(self) -> bool:
        """Whether any HTTP server answers at the address (whatever its status)."""
        try:
            self.http.get("/health", timeout=CONNECT_TIMEOUT_S)
        except httpx.TransportError:
            return False
        return True

    def show(self, model: str, system: str | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"model": model}
        if system:
            body["system"] = system
        result: dict[str, Any] = self.json("POST", "/api/show", body)
        return result

    def has_blob(self, digest: str) -> bool:
        try:
            response = self.http.head(f"/api/blobs/{digest}")
        except httpx.TransportError as exc:
            raise self._transport_error(exc) from None
        if response.status_code == 404:
            return False
        if response.status_code >= 400:
            raise _error_of(response)
        return True

    def upload_blob(self, digest: str, chunks: Iterable[bytes], size: int) -> None:
        """Stream a file's bytes to ``POST /api/blobs/<digest>`` with a Content-Length."""
        headers = {"Content-Length": str(size), "Content-Type": "application/octet-stream"}
        self.send("POST", f"/api/blobs/{digest}", content=chunks, headers=headers)


def _error_of(response: httpx.Response) -> ServerError:
    """The server's ``{"error": ...}`` message, else the status line."""
    message = ""
    try:
        body = response.json()
    except ValueError:
        body = None
    if isinstance(body, dict):
        error = body.get("error")
        if isinstance(error, dict):  # other API families nest it
            error = error.get("message")
        message = str(error or body.get("detail") or "")
    if not message:
        text = response.text.strip() if response.content else ""
        message = text[:200] or f"{response.status_code} {response.reason_phrase}"
    return ServerError(message, response.status_code)


def fail(message: str, status: int = 1) -> typer.Exit:
    """Print ``Error: message`` to stderr; returns the ``typer.Exit`` to raise."""
    print(f"Error: {message}", file=sys.stderr, flush=True)
    return typer.Exit(status)


def cli_errors(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """Run a verb: ``CLIError`` -> ``Error: ...`` and exit 1; Ctrl-C -> exit 130."""

    @functools.wraps(func)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        try:
            return func(*args, **kwargs)
        except CLIError as exc:
            raise fail(exc.message) from None
        except KeyboardInterrupt:
            print(file=sys.stderr)
            raise typer.Exit(130) from None

    return wrapper
