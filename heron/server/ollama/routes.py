"""Ollama's HTTP API on ``heron serve``: ``/``, ``/api/version``, ``/api/tags``, ``/api/show``,
``/api/ps``, ``/api/generate``, ``/api/chat``, ``/api/embed`` and ``/api/embeddings``.

Errors are ``{"error": "..."}`` with Ollama's statuses. ``serving`` lists where Heron's
generation differs from Ollama's; ``models`` explains ``keep_alive`` and ``/api/ps``.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from fastapi import APIRouter, FastAPI, Request
from fastapi.responses import PlainTextResponse, Response
from fastapi.routing import APIRoute

from heron import __version__
from heron.server.common import APIError
from heron.server.ollama import manage
from heron.server.ollama.embed import OllamaEmbeddings
from heron.server.ollama.models import Cards, list_models, running_models, show_model
from heron.server.ollama.protocol import (
    ChatRequest,
    ChatResponse,
    CopyRequest,
    CreateRequest,
    DeleteRequest,
    EmbeddingsRequest,
    EmbeddingsResponse,
    EmbedRequest,
    EmbedResponse,
    ErrorResponse,
    GenerateRequest,
    GenerateResponse,
    ListResponse,
    ProcessResponse,
    PullRequest,
    ShowRequest,
    ShowResponse,
    StatusResponse,
    VersionResponse,
)
from heron.server.ollama.serving import OllamaService
from heron.server.state import ServerState

_Body = TypeVar(
    "_Body",
    GenerateRequest,
    ChatRequest,
    ShowRequest,
    PullRequest,
    CreateRequest,
    DeleteRequest,
    EmbedRequest,
    EmbeddingsRequest,
)
_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorResponse, "description": "Bad request"},
    404: {"model": ErrorResponse, "description": "Model not found"},
    503: {"model": ErrorResponse, "description": "Server busy (Retry-After)"},
}


def _ndjson(schema: str) -> dict[int | str, dict[str, Any]]:
    content = {"application/x-ndjson": {"schema": {"$ref": f"#/components/schemas/{schema}"}}}
    return {**_ERRORS, 200: {"content": content}}


class AnyJSONRoute(APIRoute):
    """Reads the body as JSON whatever its Content-Type, as Ollama does: ``curl -d`` sends
    ``application/x-www-form-urlencoded`` and Ollama's own examples rely on it."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def route(request: Request) -> Response:
            kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
            if request.method == "POST" and not (
                kind == "application/json" or kind.endswith("+json")
            ):
                scope = dict(request.scope)
                headers = [(k, v) for k, v in scope["headers"] if k.lower() != b"content-type"]
                scope["headers"] = [*headers, (b"content-type", b"application/json")]
                request = Request(scope, request.receive)
            return await handler(request)

        return route


def _required(body: _Body | None) -> _Body:
    if body is None:
        raise APIError(400, "missing request body")
    return body


def register(app: FastAPI, state: ServerState) -> None:
    router = APIRouter(route_class=AnyJSONRoute, tags=["ollama"])
    _add_model_routes(router, state)
    _add_generation_routes(router, state)
    _add_store_routes(router, state)
    app.include_router(router)


def _add_model_routes(router: APIRouter, state: ServerState) -> None:
    """``/``, ``/api/version``, ``/api/tags``, ``/api/ps`` and ``/api/show``."""
    cards = Cards()

    @router.api_route("/", methods=["GET", "HEAD"], response_class=PlainTextResponse)
    async def root() -> str:
        """Health probe used by Ollama clients."""
        return "Ollama is running"

    @router.api_route("/api/version", methods=["GET", "HEAD"], response_model=VersionResponse)
    async def version() -> dict[str, str]:
        return {"version": __version__}

    @router.api_route(
        "/api/tags",
        methods=["GET", "HEAD"],
        response_model=ListResponse,
        response_model_exclude_none=True,
    )
    async def tags() -> ListResponse:
        """Every model the server can load."""
        return await list_models(state, cards)

    @router.get("/api/ps", response_model=ProcessResponse, response_model_exclude_none=True)
    async def ps() -> ProcessResponse:
        """The loaded models, each until its keep_alive runs out."""
        return await running_models(state, cards)

    @router.post(
        "/api/show",
        response_model=ShowResponse,
        response_model_exclude_none=True,
        responses=_ERRORS,
    )
    async def show(body: ShowRequest | None = None) -> ShowResponse:
        """Model details, Modelfile, template and GGUF metadata."""
        return await show_model(state, cards, _required(body))


def _add_generation_routes(router: APIRouter, state: ServerState) -> None:
    """``/api/generate``, ``/api/chat``, ``/api/embed`` and ``/api/embeddings``."""
    service = OllamaService(state)
    embedding = OllamaEmbeddings(state)

    @router.post(
        "/api/generate",
        response_model=GenerateResponse,
        response_model_exclude_none=True,
        responses=_ndjson("GenerateResponse"),
    )
    async def generate(request: Request, body: GenerateRequest | None = None) -> Response:
        """Complete a prompt; NDJSON chunks unless ``stream`` is false."""
        return await service.generate(_required(body), request)

    @router.post(
        "/api/chat",
        response_model=ChatResponse,
        response_model_exclude_none=True,
        responses=_ndjson("ChatResponse"),
    )
    async def chat(request: Request, body: ChatRequest | None = None) -> Response:
        """Reply to a conversation; NDJSON chunks unless ``stream`` is false."""
        return await service.chat(_required(body), request)

    @router.post(
        "/api/embed",
        response_model=EmbedResponse,
        response_model_exclude_none=True,
        responses=_ERRORS,
    )
    async def embed(request: Request, body: EmbedRequest | None = None) -> Response:
        """Embed a text or a list of texts with an embedding model; L2-normalised vectors."""
        return await embedding.embed(_required(body), request)

    @router.post("/api/embeddings", response_model=EmbeddingsResponse, responses=_ERRORS)
    async def embeddings(request: Request, body: EmbeddingsRequest | None = None) -> Response:
        """Embed one prompt (the older form of /api/embed)."""
        return await embedding.embeddings(_required(body), request)


def _add_store_routes(router: APIRouter, state: ServerState) -> None:
    """``/api/pull``, ``/api/create``, ``/api/copy``, ``/api/delete`` and ``/api/blobs``."""

    @router.post("/api/pull", response_model=StatusResponse, responses=_ndjson("StatusResponse"))
    async def pull(body: PullRequest | None = None) -> Response:
        """Download a model into the store, verified; NDJSON progress unless ``stream`` is
        false."""
        return await manage.pull(state, _required(body))

    @router.post("/api/create", response_model=StatusResponse, responses=_ndjson("StatusResponse"))
    async def create(body: CreateRequest | None = None) -> Response:
        """Create a model from another model or uploaded files, with Modelfile settings."""
        return await manage.create(state, _required(body))

    @router.post("/api/copy", responses=_ERRORS)
    async def copy(body: CopyRequest) -> Response:
        """Give a model another name (no bytes are copied)."""
        return await manage.copy(state, body)

    @router.delete("/api/delete", responses=_ERRORS)
    async def delete(body: DeleteRequest | None = None) -> Response:
        """Remove a model and the blobs nothing else uses."""
        return await manage.delete(state, _required(body))

    @router.head("/api/blobs/{digest}", responses=_ERRORS)
    async def blob_exists(digest: str) -> Response:
        """200 if the store has the blob, else 404."""
        return await manage.blob_exists(state, digest)

    @router.post("/api/blobs/{digest}", status_code=201, responses=_ERRORS)
    async def blob_upload(digest: str, request: Request) -> Response:
        """Store the raw body as a blob if its sha256 matches ``digest``."""
        return await manage.blob_upload(state, digest, request)
