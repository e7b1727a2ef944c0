"""Routes of OpenAI's Responses API: create, and the bounded store's retrieve, input items
and delete. Errors render in OpenAI's shape through the app's handlers."""

from __future__ import annotations

from typing import Any, Literal

from fastapi import FastAPI, Request
from fastapi.responses import Response

from heron.server.common import APIError
from heron.server.openai.protocol import ErrorResponse
from heron.server.openai.responses import ResponsesServing
from heron.server.openai.responses_protocol import (
    DeletedResponse,
    InputItemList,
    ResponseCreateRequest,
    ResponseObject,
)
from heron.server.state import ServerState

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request"},
    404: {"model": ErrorResponse, "description": "Unknown model or response"},
}


def register(app: FastAPI, state: ServerState) -> None:
    serving = ResponsesServing(state)

    @app.post(
        "/v1/responses",
        response_model=None,
        responses={
            200: {
                "model": ResponseObject,
                "description": "The response, or with stream: true server-sent events "
                "(response.created ... response.completed)",
                "content": {"text/event-stream": {"schema": {"type": "string"}}},
            },
            **_ERRORS,
            503: {"model": ErrorResponse, "description": "Busy or shutting down"},
        },
        tags=["openai"],
    )
    async def create_response(request: Request, body: ResponseCreateRequest) -> Response:
        """Answer an input (text or items) with the chat template; stored unless
        store is false."""
        return await serving.create(request, body)

    @app.get(
        "/v1/responses/{response_id}",
        response_model=ResponseObject,
        responses=_ERRORS,
        tags=["openai"],
    )
    async def retrieve_response(response_id: str, stream: bool = False) -> ResponseObject:
        """A stored response."""
        if stream:
            raise APIError(400, "streaming a stored response is not supported", param="stream")
        return serving.retrieve(response_id)

    @app.get(
        "/v1/responses/{response_id}/input_items",
        response_model=InputItemList,
        responses=_ERRORS,
        tags=["openai"],
    )
    async def list_input_items(
        response_id: str, order: Literal["asc", "desc"] = "desc"
    ) -> InputItemList:
        """The input items of a stored response."""
        return serving.input_items(response_id, order)

    @app.delete(
        "/v1/responses/{response_id}",
        response_model=DeletedResponse,
        responses=_ERRORS,
        tags=["openai"],
    )
    async def delete_response(response_id: str) -> DeletedResponse:
        """Forget a stored response."""
        return serving.delete(response_id)
