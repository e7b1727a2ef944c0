"""The HTTP/1.1 protocol ``heron serve`` gives uvicorn.

httptools (llhttp, in C) when it is installed: against uvicorn's pure-Python h11 it takes
about 1.4 ms off a one-user request's time to first token on the project's machine. uvicorn
caps the request head only for h11 (``h11_max_incomplete_event_size``), so the protocol here
counts head bytes as they arrive and answers 400 past the cap, before llhttp has buffered an
unbounded header; the ASGI guard (``security.py``) still answers 431 above its own limit.

The protocol wraps the one uvicorn selects for ``http="httptools"``: it passes the transport
events through and keeps no state of uvicorn's, so it relies only on the asyncio protocol
interface and the keyword arguments uvicorn documents for an ``http`` protocol class.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, ClassVar, cast

# How long a rejected connection stays open, reading and dropping what the client still sends,
# after its 400 and a half-close.
LINGER_S = 2.0


class HeadCounter:
    """Follows a connection's request stream with a parser of its own, to know where each
    request head starts and ends, and counts the head bytes that arrive."""

    def __init__(self, max_head_bytes: int) -> None:
        import httptools

        self.max_head_bytes = max_head_bytes
        self.head_bytes = 0
        self.in_head = True  # a connection starts in a request head
        self.following = True  # False after an upgrade or a parse error: uvicorn answers those
        self._errors = (httptools.HttpParserError, httptools.HttpParserUpgrade)
        self._parser = httptools.HttpRequestParser(self)
        try:
            # The same leniency uvicorn's parser has, so that both read a stream alike.
            self._parser.set_dangerous_leniencies(lenient_data_after_close=True)
        except AttributeError:  # older httptools
            pass

    def on_headers_complete(self) -> None:
        self.in_head = False

    def on_message_complete(self) -> None:
        self.head_bytes, self.in_head = 0, True  # a kept-alive connection's next head

    def admit(self, data: bytes) -> bool:
        """Count ``data``; False once the head it belongs to has passed the cap."""
        if not self.following:
            return True
        if self.in_head:
            end = data.find(b"\r\n\r\n")
            self.head_bytes += len(data) if end < 0 else end
            if self.head_bytes > self.max_head_bytes:
                return False
        try:
            self._parser.feed_data(data)
        except self._errors:
            self.following = False
        return True


class HeadCappedProtocol(asyncio.Protocol):
    """uvicorn's httptools protocol behind a request-head cap. ``http_protocol`` makes the
    concrete class, with ``inner_class`` and ``max_head_bytes`` set."""

    inner_class: ClassVar[Callable[..., asyncio.Protocol]]
    max_head_bytes: ClassVar[int]

    def __init__(self, **kwargs: Any) -> None:
        self._inner = self.inner_class(**kwargs)
        self._heads = HeadCounter(self.max_head_bytes)
        self._transport: asyncio.Transport | None = None
        self._rejected = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._inner.connection_made(transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def eof_received(self) -> bool | None:
        if self._rejected:
            return None  # the client is done too: close now
        return self._inner.eof_received()

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return  # the 400 is out; drop the rest of the head
        if not self._heads.admit(data):
            self._reject(b"Request headers are too large.")
            return
        self._inner.data_received(data)

    def _reject(self, message: bytes) -> None:
        """Answer 400, half-close, and close only after the client does (or LINGER_S):
        closing a socket with unread input makes the kernel reset the connection, which
        can destroy the answer before the client has read it."""
        self._rejected = True
        transport = self._transport
        assert transport is not None
        transport.write(
            b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n"
            + f"content-length: {len(message)}\r\nconnection: close\r\n\r\n".encode()
            + message
        )
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_S, transport.close)


def http_protocol(max_head_bytes: int) -> type[asyncio.Protocol] | str:
    """A uvicorn ``http`` setting: httptools with the head capped at ``max_head_bytes``, or
    ``"h11"`` where httptools is missing."""
    try:
        import httptools  # noqa: F401
    except ImportError:
        return "h11"
    from uvicorn.config import HTTP_PROTOCOLS
    from uvicorn.importer import import_from_string

    # The class uvicorn itself loads for ``http="httptools"``.
    inner: Callable[..., asyncio.Protocol] = import_from_string(HTTP_PROTOCOLS["httptools"])
    cap = max_head_bytes

    class CappedHttpTools(HeadCappedProtocol):
        inner_class = inner
        max_head_bytes = cap

    return CappedHttpTools
