"""Stored responses of the Responses API: a bounded, in-memory map from ``resp_...`` ids to
the response and the conversation it closed, for ``GET``/``DELETE /v1/responses/{id}`` and
``previous_response_id``.

OpenAI stores responses by default (``store`` true); Heron keeps them in the server's
memory only, under explicit caps: at most ``max_responses`` of them, ``max_chars`` of text
in all, each for ``ttl_s`` seconds. The oldest go first when a cap is reached, and nothing
survives a restart. ``store: false`` keeps nothing.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

from heron.server.common import text_size
from heron.server.openai.responses_protocol import ResponseObject

MAX_STORED_RESPONSES = 1000
MAX_STORED_CHARS = 64 << 20
STORED_TTL_S = 3600.0


@dataclass(slots=True)
class StoredResponse:
    """A response and what it continues from: ``conversation`` holds the chat messages of
    every turn so far and this response's output (instructions left out: OpenAI does not
    carry them over to the next response); ``input_items`` are this request's own items."""

    response: ResponseObject
    conversation: list[dict[str, Any]]
    input_items: list[dict[str, Any]]
    num_chars: int = 0
    expires_at: float = 0.0


class ResponseStore:
    """Responses by id, oldest first. Not thread-safe: used from the event loop only."""

    def __init__(
        self,
        max_responses: int = MAX_STORED_RESPONSES,
        max_chars: int = MAX_STORED_CHARS,
        ttl_s: float = STORED_TTL_S,
    ) -> None:
        self.max_responses = max_responses
        self.max_chars = max_chars
        self.ttl_s = ttl_s
        self.num_chars = 0
        self._items: OrderedDict[str, StoredResponse] = OrderedDict()

    def __len__(self) -> int:
        return len(self._items)

    def put(self, stored: StoredResponse) -> None:
        """Keep ``stored`` (sets its size and expiry), evicting the oldest responses past
        the caps. One larger than ``max_chars`` alone is not kept."""
        self._expire()
        stored.num_chars = text_size(
            [stored.conversation, stored.input_items], limit=self.max_chars
        )
        if stored.num_chars > self.max_chars:
            return
        stored.expires_at = time.monotonic() + self.ttl_s
        self.delete(stored.response.id)
        self._items[stored.response.id] = stored
        self.num_chars += stored.num_chars
        while len(self._items) > self.max_responses or self.num_chars > self.max_chars:
            self._pop_oldest()

    def get(self, response_id: str) -> StoredResponse | None:
        """The stored response, or None if it is unknown, deleted, evicted or expired."""
        self._expire()
        return self._items.get(response_id)

    def delete(self, response_id: str) -> bool:
        """Forget a response; False if it was not stored."""
        stored = self._items.pop(response_id, None)
        if stored is None:
            return False
        self.num_chars -= stored.num_chars
        return True

    def _pop_oldest(self) -> None:
        _, stored = self._items.popitem(last=False)
        self.num_chars -= stored.num_chars

    def _expire(self) -> None:
        now = time.monotonic()
        while self._items and next(iter(self._items.values())).expires_at <= now:
            self._pop_oldest()
