"""The FastAPI app: operational routes, error rendering, and the API families (a registry
with lazy imports)."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Receive, Scope, Send

from heron import __version__
from heron.engine.protocol import EngineDeadError, QueueFullError
from heron.server import replicas as replica_routes
from heron.server.common import APIError, error_response, family_of
from heron.server.run import ClientGone
from heron.server.state import ServerState

if TYPE_CHECKING:
    from heron.engine.replica_member import ReplicaStatus

logger = logging.getLogger(__name__)

API_FAMILIES: dict[str, str] = {
    "openai": "heron.server.openai.routes",
    "anthropic": "heron.server.anthropic.routes",
    "ollama": "heron.server.ollama.routes",
}

RETRY_AFTER_S = "1"


def build_app(state: ServerState, families: list[str] | None = None) -> FastAPI:
    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        yield
        await asyncio.to_thread(state.models.shutdown)

    app = FastAPI(
        title="Heron", version=__version__, docs_url=None, redoc_url=None, lifespan=lifespan
    )
    app.state.heron = state

    add_error_handlers(app)

    add_operational_routes(app, state)
    replica_routes.register(app, state)
    for name in list(API_FAMILIES) if families is None else families:
        module = importlib.import_module(API_FAMILIES[name])
        module.register(app, state)
    return app


def add_error_handlers(app: FastAPI) -> None:
    """Every error, wherever it is raised, answers in the shape of the path's API family."""

    @app.exception_handler(APIError)
    async def api_error(request: Request, exc: APIError) -> JSONResponse:
        return error_response(family_of(request.url.path), exc)

    @app.exception_handler(RequestValidationError)
    async def validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        param = ".".join(loc) or None
        msg = first.get("msg", "invalid request")
        if first.get("type") == "extra_forbidden":
            msg = f"unsupported field: {param}"
        elif first.get("type") == "json_invalid":
            msg, param = "malformed JSON body", None
        message = f"{msg} ({param})" if param and "unsupported" not in msg else msg
        return error_response(family_of(request.url.path), APIError(400, message, param=param))

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        # A route that does not exist; "not_found" is kept for unknown models.
        err = APIError(exc.status_code, str(exc.detail), "invalid_request")
        return error_response(family_of(request.url.path), err)

    @app.exception_handler(ValueError)
    async def value_error(request: Request, exc: ValueError) -> JSONResponse:
        # Validation that happens below the routes (tokenizer, sampling parameters).
        return error_response(family_of(request.url.path), APIError(400, str(exc)))

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        logger.exception("unhandled error on %s", request.url.path)
        err = APIError(500, "internal server error", "server_error")
        return error_response(family_of(request.url.path), err)

    @app.exception_handler(ClientGone)
    async def client_gone(request: Request, exc: ClientGone) -> Response:
        return Response(status_code=499)  # the client went away; nobody reads this

    @app.exception_handler(QueueFullError)
    async def queue_full(request: Request, exc: QueueFullError) -> JSONResponse:
        err = APIError(503, str(exc), "overloaded", headers={"Retry-After": RETRY_AFTER_S})
        return error_response(family_of(request.url.path), err)

    @app.exception_handler(EngineDeadError)
    async def engine_dead(request: Request, exc: EngineDeadError) -> JSONResponse:
        return error_response(family_of(request.url.path), APIError(503, str(exc), "server_error"))


def add_operational_routes(app: FastAPI, state: ServerState) -> None:
    """/health, /ready and /metrics."""

    @app.get("/health", include_in_schema=False)
    async def health() -> Response:
        """Liveness: the HTTP server answers and the command line's model, while loaded,
        still has its engine process."""
        pinned = state.models.pinned_model
        if pinned is not None and not pinned.engine.alive:
            return PlainTextResponse("engine process has exited", status_code=503)
        return PlainTextResponse("ok")

    @app.get("/ready", include_in_schema=False)
    async def ready() -> Response:
        """Readiness: fails while the command line's model loads, while draining, or if its
        engine died. Other models load on demand and do not affect readiness."""
        pinned = state.models.pinned_model  # None once a request unloaded it: loads again
        if pinned is not None:
            if not pinned.engine.alive:
                return PlainTextResponse("engine process has exited", status_code=503)
            if not pinned.engine.ready:
                return PlainTextResponse("loading", status_code=503)
        if state.draining:
            return PlainTextResponse("draining", status_code=503)
        replicas = _replicas(state)
        if pinned is not None and pinned.name in replicas:
            # serving while one replica restarts, and saying so
            up = sum(r.up for r in replicas[pinned.name])
            return PlainTextResponse(f"ready ({up} of {len(replicas[pinned.name])} replicas)")
        return PlainTextResponse("ready")

    @app.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        state.metrics.update_engines(state.models.engine_stats())
        state.metrics.update_adapters(state.models.adapter_counts())
        state.metrics.update_replicas(_replicas(state))
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4")


def _replicas(state: ServerState) -> dict[str, list[ReplicaStatus]]:
    """Each data-parallel model's replicas, by model name."""
    from heron.engine.dp_client import DataParallelClient

    return {
        m.name: m.engine.replicas()
        for m in state.models.loaded.values()
        if isinstance(m.engine, DataParallelClient)
    }


class DrainGuard:
    """While draining (after SIGTERM), refuse new work with 503 + Retry-After; requests
    already running finish normally."""

    OPEN = frozenset({"/health", "/ready", "/metrics"})

    def __init__(self, app: ASGIApp, state: ServerState) -> None:
        self.app = app
        self.state = state

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and self.state.draining and scope["path"] not in self.OPEN:
            headers = {"Retry-After": RETRY_AFTER_S}
            err = APIError(503, "server is shutting down", "overloaded", headers=headers)
            await error_response(family_of(scope["path"]), err)(scope, receive, send)
            return
        await self.app(scope, receive, send)
