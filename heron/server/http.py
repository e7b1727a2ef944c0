"""The HTTP/1.1 protocol ``heron serve`` gives uvicorn.

httptools (llhttp, in C) when it is installed: against uvicorn's pure-Python h11 it takes
about 1.4 ms off a one-user request's time to first token on the project's machine. uvicorn
caps the request head only for h11 (``h11_max_incomplete_event_size``), so the protocol here
counts head bytes as they arrive and answers 400 past the cap, before llhttp has buffered an
unbounded header; the ASGI guard (``security.py``) still answers 431 above its own limit.

The same follower times slow clients (slowloris), which uvicorn does not: a request head
must be whole within ``head_timeout_s`` of its first byte (of the connection, for the first
request), and a body must keep coming: the time it has been awaited, while the server was
reading, may pass ``body_timeout_s`` only by what arrived over ``MIN_BODY_RATE``. A slow
connection is closed. And one client address holds at most ``max_per_client`` connections;
the next get 429 and a close.

The protocol wraps the one uvicorn selects for ``http="httptools"``: it passes the transport
events through and keeps no state of uvicorn's, so it relies only on the asyncio protocol
interface and the keyword arguments uvicorn documents for an ``http`` protocol class.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, cast

logger = logging.getLogger(__name__)

# How long a rejected connection stays open, reading and dropping what the client still sends,
# after its 400 and a half-close.
LINGER_S = 2.0
# A body may arrive this slowly, past its first ``body_timeout_s``, and no slower.
MIN_BODY_RATE = 8 << 10  # bytes per second


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """What one connection may take: head size and time, body time, and connections per
    client address."""

    max_head_bytes: int
    head_timeout_s: float = 10.0
    body_timeout_s: float = 30.0
    max_per_client: int = 128

    def __post_init__(self) -> None:
        if self.max_head_bytes < 1 or self.max_per_client < 1:
            raise ValueError("max_head_bytes and max_per_client must be positive")
        if not (self.head_timeout_s > 0 and self.body_timeout_s > 0):
            raise ValueError("head_timeout_s and body_timeout_s must be positive")


class HeadCounter:
    """Follows a connection's request stream with a parser of its own, to know where each
    request head starts and ends, and counts the head bytes that arrive."""

    def __init__(self, max_head_bytes: int) -> None:
        import httptools

        self.max_head_bytes = max_head_bytes
        self.head_bytes = 0
        self.in_head = True  # a connection starts in a request head
        self.in_body = False  # the head is whole, the message not yet
        self.head_begun = False  # a byte of the current head has arrived
        self.body_bytes = 0
        self.heads_done = 0
        self.messages_done = 0
        self.following = True  # False after an upgrade or a parse error: uvicorn answers those
        self.upgraded = False
        self._errors = (httptools.HttpParserError, httptools.HttpParserUpgrade)
        self._parser = httptools.HttpRequestParser(self)
        try:
            # The same leniency uvicorn's parser has, so that both read a stream alike.
            self._parser.set_dangerous_leniencies(lenient_data_after_close=True)
        except AttributeError:  # older httptools
            pass

    def on_message_begin(self) -> None:
        self.head_begun = True

    def on_headers_complete(self) -> None:
        self.in_head, self.in_body, self.body_bytes = False, True, 0
        self.heads_done += 1

    def on_body(self, body: bytes) -> None:
        self.body_bytes += len(body)

    def on_message_complete(self) -> None:
        self.head_bytes, self.in_head = 0, True  # a kept-alive connection's next head
        self.in_body = self.head_begun = False
        self.messages_done += 1

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
        except self._errors as exc:
            self.following = False
            self.upgraded = isinstance(exc, self._errors[1])
        return True


_REASONS = {400: b"Bad Request", 408: b"Request Timeout", 429: b"Too Many Requests"}


class GuardedProtocol(asyncio.Protocol):
    """uvicorn's httptools protocol behind ``ConnectionLimits``. ``http_protocol`` makes the
    concrete class, with ``inner_class``, ``limits`` and ``clients`` set."""

    inner_class: ClassVar[Callable[..., asyncio.Protocol]]
    limits: ClassVar[ConnectionLimits]
    clients: ClassVar[dict[str, int]]  # this server's open connections per client address

    def __init__(self, **kwargs: Any) -> None:
        self._inner = self.inner_class(**kwargs)
        self._heads = HeadCounter(self.limits.max_head_bytes)
        self._transport: asyncio.Transport | None = None
        self._rejected = False
        self._client: str | None = None  # the address counted in ``clients``; None: refused
        self._messages_seen = 0
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_waited_s = 0.0
        self._tick_s = min(1.0, self.limits.body_timeout_s / 4)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        client = str(peer[0]) if isinstance(peer, tuple) and peer else ""
        if self.clients.get(client, 0) >= self.limits.max_per_client:
            self._reject(429, b"Too many connections from this address.")  # uvicorn never sees it
            return
        self.clients[client] = self.clients.get(client, 0) + 1
        self._client = client
        self._inner.connection_made(transport)
        self._arm_head_timer()  # the first head's clock starts with the connection

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_timers()
        if self._client is None:
            return
        left = self.clients.get(self._client, 1) - 1
        if left > 0:
            self.clients[self._client] = left
        else:
            self.clients.pop(self._client, None)
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        if self._client is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._client is not None:
            self._inner.resume_writing()

    def eof_received(self) -> bool | None:
        if self._rejected:
            return None  # the client is done too: close now
        return self._inner.eof_received()

    def data_received(self, data: bytes) -> None:
        if self._rejected:
            return  # the answer is out; drop the rest
        if not self._heads.admit(data):
            self._reject(400, b"Request headers are too large.")
            return
        self._inner.data_received(data)
        self._follow_clocks()

    # Clocks: one for the current head, a tick for the current body.
    def _follow_clocks(self) -> None:
        heads = self._heads
        if not heads.following:
            self._cancel_timers()
            if heads.upgraded:  # Heron serves no upgrade: such a connection has its body time
                self._head_timer = self._later(self.limits.body_timeout_s, self._timed_out)
            return
        if heads.in_body:
            self._cancel_head_timer()
            if self._body_timer is None:
                self._body_waited_s = 0.0
                self._body_timer = self._later(self._tick_s, self._body_tick)
            return
        self._cancel_body_timer()
        ended = heads.messages_done != self._messages_seen
        self._messages_seen = heads.messages_done
        if ended and not heads.head_begun:
            self._cancel_head_timer()  # a request is whole; uvicorn's keep-alive takes over
        else:
            self._arm_head_timer()  # bytes of a head (or stray bytes): the clock runs

    def _arm_head_timer(self) -> None:
        if self._head_timer is None:
            self._head_timer = self._later(self.limits.head_timeout_s, self._timed_out)

    def _body_tick(self) -> None:
        """Count the time the body has been awaited, leaving out the time uvicorn stopped
        reading (its app had not taken what came); close the connection once it is slow."""
        self._body_timer = None
        transport = self._transport
        assert transport is not None
        if transport.is_reading():
            self._body_waited_s += self._tick_s
        allowed = self.limits.body_timeout_s + self._heads.body_bytes / MIN_BODY_RATE
        if self._body_waited_s > allowed:
            self._timed_out()
            return
        self._body_timer = self._later(self._tick_s, self._body_tick)

    def _timed_out(self) -> None:
        self._cancel_timers()
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._heads.heads_done == 0 and self._heads.in_head:
            # Nothing was asked on this connection yet, so nothing else answers on it.
            self._reject(408, b"The request took too long to arrive.")
        else:
            logger.debug("closing a connection whose request is too slow")
            transport.close()

    def _later(self, delay: float, callback: Callable[[], None]) -> asyncio.TimerHandle:
        return asyncio.get_running_loop().call_later(delay, callback)

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _cancel_timers(self) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()

    def _reject(self, status: int, message: bytes) -> None:
        """Answer ``status``, half-close, and close only after the client does (or LINGER_S):
        closing a socket with unread input makes the kernel reset the connection, which
        can destroy the answer before the client has read it."""
        self._rejected = True
        self._cancel_timers()
        transport = self._transport
        assert transport is not None
        extra = b"retry-after: 1\r\n" if status == 429 else b""
        transport.write(
            b"HTTP/1.1 %d %s\r\n" % (status, _REASONS[status])
            + b"content-type: text/plain; charset=utf-8\r\n"
            + extra
            + b"content-length: %d\r\nconnection: close\r\n\r\n" % len(message)
            + message
        )
        if transport.can_write_eof():
            transport.write_eof()
        asyncio.get_running_loop().call_later(LINGER_S, transport.close)


def http_protocol(limits: ConnectionLimits) -> type[asyncio.Protocol] | str:
    """A uvicorn ``http`` setting: httptools behind ``limits``, or ``"h11"`` where httptools
    is missing (then only the head cap holds, through uvicorn's own setting for h11)."""
    try:
        import httptools  # noqa: F401
    except ImportError:
        return "h11"
    from uvicorn.config import HTTP_PROTOCOLS
    from uvicorn.importer import import_from_string

    # The class uvicorn itself loads for ``http="httptools"``.
    inner: Callable[..., asyncio.Protocol] = import_from_string(HTTP_PROTOCOLS["httptools"])
    connection_limits = limits

    class GuardedHttpTools(GuardedProtocol):
        inner_class = inner
        limits = connection_limits
        clients = {}

    return GuardedHttpTools
