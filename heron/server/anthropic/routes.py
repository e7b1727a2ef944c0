"""Routes of the Anthropic family; the translation lives in ``serving``."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import Response

from heron.server.anthropic.protocol import (
    CountTokensRequest,
    Message,
    MessageCreateRequest,
    MessageTokensCount,
)
from heron.server.anthropic.serving import AnthropicServing
from heron.server.state import ServerState

_MESSAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": Message,
        "description": "The message, or with `stream: true` its server-sent events.",
        "content": {"text/event-stream": {}},
    }
}


def register(app: FastAPI, state: ServerState) -> None:
    serving = AnthropicServing(state)
    router = APIRouter(tags=["anthropic"])

    @router.post("/v1/messages", response_model=None, responses=_MESSAGE_RESPONSES)
    async def create_message(request: Request, body: MessageCreateRequest) -> Response:
        """Generate the next assistant message of a conversation."""
        return await serving.messages(request, body)

    @router.post("/v1/messages/count_tokens")
    async def count_tokens(body: CountTokensRequest) -> MessageTokensCount:
        """Count the prompt tokens of a conversation as ``/v1/messages`` would render it."""
        return await serving.count_tokens(body)

    app.include_router(router)
