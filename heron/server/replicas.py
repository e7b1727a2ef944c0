"""Operator routes for data-parallel replicas, behind the API key like every route but /health:

- ``GET /admin/replicas``: each data-parallel model's replicas (state: serving, draining,
  restarting, loading or down; where each runs; restarts by reason) and its rolling restart.
- ``POST /admin/replicas/restart`` ``{"model"?, "drain_timeout"?}``: start a rolling restart
  (``heron.engine.rolling``) and answer 202 with its plan; 409 while one runs or when the
  model has a single replica. ``SIGHUP`` to ``heron serve`` starts the same restart of the
  command line's model (``heron/server/serve.py``).

Errors take the OpenAI shape, as every path outside the Ollama and Anthropic families.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field

from heron.engine.rolling import NothingToRollError, RollInProgressError, RollProgress
from heron.server.common import APIError
from heron.server.model_spec import LoadedModel
from heron.server.state import ServerState

if TYPE_CHECKING:
    from heron.engine.dp_client import DataParallelClient

MAX_DRAIN_TIMEOUT_S = 3600.0


class RestartRequest(BaseModel):
    """``model``: a loaded model's name (default: the command line's model);
    ``drain_timeout``: seconds each replica may take to finish its requests (default: the
    server's ``--shutdown-timeout``)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)
    model: str | None = None
    drain_timeout: float | None = Field(default=None, ge=0, le=MAX_DRAIN_TIMEOUT_S)


def register(app: FastAPI, state: ServerState) -> None:
    @app.get("/admin/replicas", include_in_schema=False)
    async def list_replicas() -> JSONResponse:
        return JSONResponse({"object": "list", "data": replica_report(state)})

    @app.post("/admin/replicas/restart", include_in_schema=False)
    async def restart_replicas(body: RestartRequest | None = None) -> JSONResponse:
        body = body or RestartRequest()
        name, progress = start_rolling_restart(state, body.model, body.drain_timeout)
        return JSONResponse(_roll_json(name, progress), status_code=202)


def start_rolling_restart(
    state: ServerState, model: str | None = None, drain_timeout: float | None = None
) -> tuple[str, RollProgress]:
    """Start a rolling restart of ``model``'s replicas (None: the command line's model, else
    the one data-parallel model loaded); returns the model's name and the restart's progress.
    Raises APIError: 404 (no such loaded model), 400 (no model named and none to default
    to), 409 (one replica, or a rolling restart already running)."""
    loaded = _target(state, model)
    engine = _parallel(loaded.engine)
    if engine is None:
        raise APIError(
            409,
            f"model '{loaded.name}' runs one engine replica: nothing to roll onto; a rolling "
            "restart needs --data-parallel-size 2 or more",
        )
    timeout = state.drain_timeout_s if drain_timeout is None else drain_timeout
    try:
        return loaded.name, engine.rolling_restart(timeout)
    except (NothingToRollError, RollInProgressError) as exc:
        raise APIError(409, str(exc)) from None


def replica_report(state: ServerState) -> list[dict[str, Any]]:
    """Every loaded data-parallel model's replicas and rolling restart, for the admin API."""
    report = []
    for loaded in state.models.loaded.values():
        engine = _parallel(loaded.engine)
        if engine is None:
            continue
        roll = engine.last_roll
        replicas = [
            {
                "index": r.index,
                "state": r.state,
                "where": r.where,
                "in_flight": r.in_flight,
                "routed": r.routed,
                "restarts": r.restarts,
            }
            for r in engine.replicas()
        ]
        report.append(
            {
                "model": loaded.name,
                "replicas": replicas,
                "crash_restarts_left": engine.crash_restarts_left,
                "rolling_restart": None if roll is None else roll.to_json(),
            }
        )
    return report


def _target(state: ServerState, model: str | None) -> LoadedModel:
    loaded = list(state.models.loaded.values())
    if model is not None:
        for m in loaded:
            if m.spec.matches(model):
                return m
        shown = model if len(model) <= 64 else model[:64] + "..."
        raise APIError(404, f"model '{shown}' is not loaded", "not_found", param="model")
    pinned = state.models.pinned_model
    if pinned is not None:
        return pinned
    parallel = [m for m in loaded if _parallel(m.engine) is not None]
    if len(parallel) == 1:
        return parallel[0]
    raise APIError(400, "name the model whose replicas to restart", param="model")


def _parallel(engine: object) -> DataParallelClient | None:
    """``engine`` when it is a data-parallel client, else None. Imports that client only
    then: it imports torch (for its CPU planning), which the HTTP process otherwise avoids."""
    if type(engine).__module__ != "heron.engine.dp_client":
        return None
    from heron.engine.dp_client import DataParallelClient

    return engine if isinstance(engine, DataParallelClient) else None


def _roll_json(name: str, progress: RollProgress) -> dict[str, Any]:
    return {"object": "replica_restart", "model": name, **progress.to_json()}
