"""Routes of the OpenAI-compatible API. Errors render in OpenAI's shape
(``{"error": {"message", "type", "param", "code"}}``) through the app's handlers."""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from heron.server.openai import lora, responses_routes
from heron.server.openai.completions import OpenAICompletions
from heron.server.openai.embeddings import create_embeddings
from heron.server.openai.protocol import (
    ChatCompletionChunk,
    ChatCompletionRequest,
    ChatCompletionResponse,
    CompletionRequest,
    CompletionResponse,
    EmbeddingRequest,
    EmbeddingResponse,
    ErrorResponse,
    ModelCard,
    ModelList,
)
from heron.server.openai.serving import OpenAIServing, not_found_message
from heron.server.state import ServerState

_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Invalid request"},
    404: {"model": ErrorResponse, "description": "Unknown model"},
    503: {"model": ErrorResponse, "description": "Busy or shutting down; see Retry-After"},
}


def _streamed(model: type[Any], final: type[Any]) -> dict[int | str, dict[str, Any]]:
    return {
        200: {
            "model": final,
            "description": "The result, or with stream: true server-sent events "
            f"(data: {model.__name__} ... then data: [DONE])",
            "content": {"text/event-stream": {"schema": {"type": "string"}}},
        },
        **_ERRORS,
    }


def register(app: FastAPI, state: ServerState) -> None:
    serving = OpenAIServing(state)
    completions = OpenAICompletions(state)
    responses_routes.register(app, state)
    lora.register(app, state)

    @app.get("/v1/models", response_model=ModelList, tags=["openai"])
    async def list_models() -> ModelList:
        """The served models and the LoRA adapters on the command line's model."""
        return serving.list_models()

    @app.get(
        "/v1/models/{model:path}",
        response_model=ModelCard,
        responses={404: _ERRORS[404]},
        tags=["openai"],
    )
    async def retrieve_model(model: str) -> ModelCard:
        return serving.get_model(model)

    @app.post(
        "/v1/chat/completions",
        response_model=None,
        responses=_streamed(ChatCompletionChunk, ChatCompletionResponse),
        tags=["openai"],
    )
    async def create_chat_completion(request: Request, body: ChatCompletionRequest) -> Response:
        """Chat with the model; the messages are rendered with its chat template."""
        return await serving.chat(request, body)

    @app.post(
        "/v1/completions",
        response_model=None,
        responses=_streamed(CompletionResponse, CompletionResponse),
        tags=["openai"],
    )
    async def create_completion(request: Request, body: CompletionRequest) -> Response:
        """Continue a prompt (text, token ids, or a batch of either)."""
        return await completions.create(request, body)

    @app.post(
        "/v1/embeddings",
        response_model=None,
        responses={
            200: {"model": EmbeddingResponse, "description": "One vector per input"},
            **_ERRORS,
        },
        tags=["openai"],
    )
    async def create_embedding(request: Request, body: EmbeddingRequest) -> Response:
        """Embed text or token ids (or a list of either) with an embedding model."""
        return await create_embeddings(state, request, body, not_found_message)
