"""Agent frameworks against one real ``heron serve`` on SmolLM2, with every exchange on record.

The frameworks build their own requests, so a failure's cause is in what they sent: each test
that takes ``wire`` gets the request bodies and the error answers in its failure report.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest

from tests.server.conftest import ServerProcess, running_server

API_KEY = "heron-frameworks-key"
# Each answer is bounded: a grammar that never closes ends in a length stop, not a long wait.
MAX_TOKENS = 128
_SHOWN_CHARS = 3000
_STREAMED = ("text/event-stream", "application/x-ndjson")


@dataclass
class Exchange:
    method: str
    url: str
    request_body: str
    status: int | None = None
    response_body: str | None = None


@dataclass
class Wire:
    """Records what a framework's httpx client sends to the server and what comes back.

    ``hooks()``/``async_hooks()`` go into an httpx or httpx2 ``Client``/``AsyncClient`` (the
    ``openai`` client's own transport is httpx2, ``ollama``'s httpx); each request appends an
    Exchange, and its answer fills it in. Streamed answers are left to the framework
    (reading them here would change what it sees); other answers are read and kept.
    """

    exchanges: list[Exchange] = field(default_factory=list)

    def hooks(self) -> dict[str, list[Callable[[Any], None]]]:
        return {"request": [self._on_request], "response": [self._on_response]}

    def async_hooks(self) -> dict[str, list[Callable[[Any], Any]]]:
        async def on_request(request: Any) -> None:
            self._on_request(request)

        async def on_response(response: Any) -> None:
            if not _streamed(response):
                await response.aread()
            self._note(response)

        return {"request": [on_request], "response": [on_response]}

    def requests(self, path_suffix: str) -> list[dict[str, Any]]:
        """The JSON bodies sent to URLs ending in ``path_suffix``, oldest first."""
        return [
            json.loads(e.request_body)
            for e in self.exchanges
            if e.url.endswith(path_suffix) and e.request_body
        ]

    def render(self) -> str:
        parts = []
        for e in self.exchanges:
            parts.append(f"{e.method} {e.url}\n{_trim(e.request_body)}")
            parts.append(f"-> {e.status}\n{_trim(e.response_body or '(streamed or not read)')}")
        return "\n".join(parts)

    def _on_request(self, request: Any) -> None:
        body = request.content.decode("utf-8", "replace") if request.content else ""
        self.exchanges.append(Exchange(request.method, str(request.url), body))

    def _on_response(self, response: Any) -> None:
        if not _streamed(response):
            response.read()
        self._note(response)

    def _note(self, response: Any) -> None:
        for e in reversed(self.exchanges):
            if e.url == str(response.request.url) and e.status is None:
                e.status = response.status_code
                if not _streamed(response):
                    e.response_body = response.text
                return


def _streamed(response: Any) -> bool:
    return str(response.headers.get("content-type", "")).startswith(_STREAMED)


def _trim(text: str) -> str:
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + " ...(cut)"


@pytest.fixture(scope="session")
def server() -> Iterator[ServerProcess]:
    with running_server("--kv-cache-memory-mb", "256", api_key=API_KEY) as s:
        yield s


@pytest.fixture
def wire() -> Wire:
    return Wire()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    yield
    recorded = getattr(item, "funcargs", {}).get("wire")
    if isinstance(recorded, Wire) and recorded.exchanges:
        item.add_report_section("call", "heron exchanges", recorded.render())
