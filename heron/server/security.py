"""Secure-by-default HTTP guards, as one ASGI middleware in front of every route.

In order: a header-size cap, one Host (and Origin, Content-Type) header at most, the Host
allowlist while bound to loopback (DNS rebinding), the Origin check (every route but /health:
a browser's request from a page of another origin is refused, so that no web page can drive
a local server; allowed are the origins ``--cors-origins`` lists, which CORS also grants, and
the server's own origin), the API key (every route but /health, compared in constant time),
JSON bodies only as ``application/json``, and a body-size cap (413 however the body comes,
with a Content-Length or chunked).
"""

from __future__ import annotations

import hmac
import ipaddress
import posixpath
from typing import Any
from urllib.parse import unquote

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from heron.server.common import APIError, error_body, family_of

OPEN_PATHS = frozenset({"/health"})
CORS_ALLOW_HEADERS = "authorization, content-type, x-api-key, anthropic-version, accept, user-agent"


# Headers a request may carry once: checks and the app must not read different copies.
SINGLE_HEADERS = frozenset({b"host", b"origin", b"content-type"})
# What ``curl -d`` sends; Ollama's documented examples rely on it (see AnyJSONRoute).
FORM_TYPE = "application/x-www-form-urlencoded"

BLOB_PREFIX = "/api/blobs/"
MAX_BLOB_BYTES = 1 << 40  # 1 TiB: larger than any model; the store checks free space as it goes


def host_allowed(host_header: str) -> bool:
    """Hosts a browser may legitimately use to reach a loopback-bound server."""
    if not host_header:
        return False
    host = host_header
    if host.startswith("["):
        host = host[1 : host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.split(":")[0]
    host = host.lower().rstrip(".")
    if host in ("localhost",) or host.endswith(".localhost"):
        return True
    try:
        ip = ipaddress.ip_address(host)
    except ValueError:
        return False
    # A rebinding attack needs a host name; IP literals of this or a private network are fine.
    return ip.is_loopback or ip.is_unspecified or ip.is_private


def same_origin(origin: str, host_header: str) -> bool:
    """Whether ``origin`` (``scheme://host[:port]``) is the server's own, as the request's
    Host header names it."""
    scheme, sep, rest = origin.lower().partition("://")
    if not sep or scheme not in ("http", "https") or not host_header:
        return False
    host = host_header.lower().removesuffix(":443" if scheme == "https" else ":80")
    return rest == host


def json_type_ok(content_type: str | None, family: str, from_browser: bool) -> bool:
    """JSON bodies come as ``application/json`` (or a ``+json`` type). The Ollama routes
    also read what ``curl -d`` sends, but never from a browser: a page can send that type
    to any origin without asking first."""
    media = (content_type or "").split(";")[0].strip().lower()
    if media == "application/json" or (
        media.startswith("application/") and media.endswith("+json")
    ):
        return True
    return family == "ollama" and not from_browser and media == FORM_TYPE


def normalise_path(raw: str) -> str:
    """Decode and collapse a request path so that checks and routing agree."""
    path = posixpath.normpath(unquote(raw or "/"))
    path = "/" + path.lstrip("/")
    return path


class SecurityMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        api_key: str | None,
        loopback_only: bool,
        cors_origins: list[str],
        max_body_bytes: int,
        max_header_bytes: int,
    ) -> None:
        self.app = app
        self.api_key = api_key.encode() if api_key else None
        self.loopback_only = loopback_only
        self.cors_origins = frozenset(o.rstrip("/") for o in cors_origins)
        self.max_body_bytes = max_body_bytes
        self.max_header_bytes = max_header_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path = normalise_path(scope.get("path", "/"))
        family = family_of(path)
        origin = headers.get("origin")
        cors_ok = origin is not None and origin.rstrip("/") in self.cors_origins
        origin_ok = origin is None or cors_ok or same_origin(origin, headers.get("host", ""))

        async def reject(err: APIError) -> None:
            await _send_json(send, err.status, error_body(family, err), _cors(origin, cors_ok))

        if path != scope.get("path", "/"):
            # The check and the router must see the same path: refuse dot segments and
            # doubly encoded separators outright.
            await reject(APIError(400, "request path is not normalised"))
            return
        if sum(len(k) + len(v) for k, v in scope["headers"]) > self.max_header_bytes:
            await reject(APIError(431, "request headers are too large", "request_too_large"))
            return
        names = [k.lower() for k, _ in scope["headers"]]
        repeated = sorted(
            {n.decode("latin-1") for n in names if n in SINGLE_HEADERS and names.count(n) > 1}
        )
        if repeated:
            await reject(APIError(400, f"more than one {repeated[0]} header"))
            return
        if self.loopback_only and not host_allowed(headers.get("host", "")):
            await reject(APIError(403, "host not allowed", "permission"))
            return
        if not origin_ok and path not in OPEN_PATHS:
            await reject(APIError(403, "origin not allowed", "permission"))
            return
        if origin is not None and not cors_ok and scope["method"] == "OPTIONS":
            await reject(APIError(403, "origin not allowed", "permission"))
            return
        if scope["method"] == "OPTIONS" and cors_ok:
            await _send_json(send, 204, None, _cors(origin, True, preflight=True))
            return
        if self.api_key is not None and path not in OPEN_PATHS and not self._key_ok(headers):
            await reject(APIError(401, "invalid or missing API key", "authentication"))
            return
        # Blob uploads (``heron create`` sending a GGUF file) are model-sized, and are hashed
        # to disk as they arrive rather than buffered; everything else keeps the small cap.
        limit = self.max_body_bytes
        if scope["method"] == "POST" and path.startswith(BLOB_PREFIX):
            limit = MAX_BLOB_BYTES
        declared = headers.get("content-length")
        valid_length = declared is None or (declared.isascii() and declared.isdigit())
        if not valid_length or (declared is not None and int(declared) > limit):
            await reject(APIError(413, "request body is too large", "request_too_large"))
            return
        has_body = "transfer-encoding" in headers or (declared is not None and int(declared) > 0)
        if (
            has_body
            and not path.startswith(BLOB_PREFIX)
            and not json_type_ok(headers.get("content-type"), family, origin is not None)
        ):
            await reject(APIError(400, "Content-Type must be application/json"))
            return

        received = 0
        too_large = False  # the body passed the cap: the app's answer gives way to a 413
        started = False

        async def limited_receive() -> Message:
            nonlocal received, too_large
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > limit:
                    too_large = True
                    raise _BodyTooLarge()
            return message

        async def guarded_send(message: Message) -> None:
            nonlocal started
            if too_large:
                return  # whatever the app made of the cut-off body (FastAPI: a 400)
            if message["type"] == "http.response.start":
                started = True
                if cors_ok:
                    message["headers"] = list(message.get("headers", [])) + [
                        (k.encode(), v.encode()) for k, v in _cors(origin, True).items()
                    ]
            await send(message)

        try:
            await self.app(scope, limited_receive, guarded_send)
        except Exception:
            if not too_large:
                raise
        if too_large and not started:
            await reject(APIError(413, "request body is too large", "request_too_large"))

    def _key_ok(self, headers: dict[str, str]) -> bool:
        assert self.api_key is not None
        presented = headers.get("x-api-key", "")
        auth = headers.get("authorization", "")
        if auth[:7].lower() == "bearer ":
            presented = auth[7:].strip()
        return hmac.compare_digest(presented.encode(), self.api_key)


class _BodyTooLarge(Exception):
    pass


def _cors(origin: str | None, allowed: bool, preflight: bool = False) -> dict[str, str]:
    if not allowed or origin is None:
        return {}
    headers = {"access-control-allow-origin": origin, "vary": "Origin"}
    if preflight:
        headers["access-control-allow-methods"] = "GET, POST, DELETE, HEAD, OPTIONS"
        headers["access-control-allow-headers"] = CORS_ALLOW_HEADERS
        headers["access-control-max-age"] = "600"
    return headers


async def _send_json(send: Send, status: int, body: Any, headers: dict[str, str]) -> None:
    import json

    payload = b"" if body is None else json.dumps(body).encode()
    raw = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    raw += [(k.encode(), v.encode()) for k, v in headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": payload})
