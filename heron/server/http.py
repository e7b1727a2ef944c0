"""The HTTP/1.1 parser ``heron serve`` gives uvicorn.

httptools (llhttp, in C) when it is installed: against uvicorn's pure-Python h11 it takes
about 1.4 ms off a one-user request's time to first token on the project's machine. uvicorn
caps the request head only for h11 (``h11_max_incomplete_event_size``), so the protocol here
counts head bytes as they arrive and answers 400 past the cap, before llhttp has buffered an
unbounded header; the ASGI guard (``security.py``) still answers 431 above its own limit.
"""

from __future__ import annotations

import asyncio


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

        def data_received(self, data: bytes) -> None:
            if self._in_head:
                end = data.find(b"\r\n\r\n")
                self._head_bytes += len(data) if end < 0 else end
                if self._head_bytes > max_head_bytes:
                    self.send_400_response("Request headers are too large.")
                    return
            super().data_received(data)

    return CappedHttpToolsProtocol
