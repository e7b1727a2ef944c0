"""The HTTP/1.1 parser ``heron serve`` gives uvicorn.

httptools (llhttp, in C) when it is installed: against uvicorn's pure-Python h11 it takes
about 1.4 ms off a one-user request's time to first token on the project's machine. uvicorn
caps the request head only for h11 (``h11_max_incomplete_event_size``), so the protocol here
counts head bytes as they arrive and answers 400 past the cap, before llhttp has buffered an
unbounded header; the ASGI guard (``security.py``) still answers 431 above its own limit.
"""

from __future__ import annotations

import asyncio

# How long a rejected connection stays open, reading and dropping what the client still sends,
# after its 400 and a half-close.
LINGER_S = 2.0


def http_protocol(max_head_bytes: int) -> type[asyncio.Protocol] | str:
    """A uvicorn ``http`` setting: httptools with the head capped at ``max_head_bytes``, or
    ``"h11"`` where httptools is missing."""
    try:
        from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
    except ImportError:
        return "h11"

    class CappedHttpToolsProtocol(HttpToolsProtocol):
        _head_bytes = 0
        _in_head = True  # a connection starts in a request head

        def on_message_begin(self) -> None:
            super().on_message_begin()
            self._head_bytes, self._in_head = 0, True

        def on_headers_complete(self) -> None:
            self._in_head = False
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            super().on_message_complete()
            self._head_bytes, self._in_head = 0, True  # a kept-alive connection's next head

        _rejected = False

        def data_received(self, data: bytes) -> None:
            if self._rejected:
                return  # the 400 is out; drop the rest of the head
            if self._in_head:
                end = data.find(b"\r\n\r\n")
                self._head_bytes += len(data) if end < 0 else end
                if self._head_bytes > max_head_bytes:
                    self._reject(b"Request headers are too large.")
                    return
            super().data_received(data)

        def _reject(self, message: bytes) -> None:
            """Answer 400, half-close, and close only after the client does (or LINGER_S):
            closing a socket with unread input makes the kernel reset the connection, which
            can destroy the answer before the client has read it."""
            self._rejected = True
            self.transport.write(
                b"HTTP/1.1 400 Bad Request\r\ncontent-type: text/plain; charset=utf-8\r\n"
                + f"content-length: {len(message)}\r\nconnection: close\r\n\r\n".encode()
                + message
            )
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self.loop.call_later(LINGER_S, self.transport.close)

    return CappedHttpToolsProtocol
