"""Start ``heron serve``: checks the bind address, starts the engine process, runs uvicorn,
and drains on SIGTERM."""

from __future__ import annotations

import logging
import math
import os
import signal
from dataclasses import dataclass, field
from types import FrameType

import uvicorn

from heron.config import EngineConfig
from heron.server.app import DrainGuard, build_app
from heron.server.engine_client import AsyncEngineClient
from heron.server.metrics import Metrics
from heron.server.security import SecurityMiddleware, is_loopback_host
from heron.server.state import ServerLimits, ServerState

logger = logging.getLogger(__name__)


class InsecureBindError(SystemExit):
    pass


@dataclass(slots=True)
class ServeConfig:
    model: str
    host: str = "127.0.0.1"
    port: int = 11434
    api_key: str | None = None
    allow_insecure_public_bind: bool = False
    cors_origins: list[str] = field(default_factory=list)
    served_model_name: str | None = None
    shutdown_timeout: float = 30.0
    limits: ServerLimits = field(default_factory=ServerLimits)
    engine: EngineConfig = field(default_factory=EngineConfig)

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if self.shutdown_timeout < 0:
            raise ValueError("shutdown_timeout must be non-negative")
        for origin in self.cors_origins:
            if origin == "*" or "://" not in origin:
                raise ValueError(
                    f"--cors-origins takes full origins like http://host:port, got {origin!r}"
                )


def check_bind(cfg: ServeConfig) -> None:
    """Refuse a non-loopback bind without an API key unless the risk is acknowledged."""
    if is_loopback_host(cfg.host) or cfg.api_key:
        return
    if cfg.allow_insecure_public_bind:
        logger.warning(
            "serving on %s with no API key: anyone who can reach it can use it", cfg.host
        )
        return
    raise InsecureBindError(
        f"refusing to listen on {cfg.host} without an API key: set --api-key (or HERON_API_KEY), "
        "or pass --allow-insecure-public-bind to accept the risk"
    )


class _Server(uvicorn.Server):
    def __init__(self, config: uvicorn.Config, state: ServerState) -> None:
        super().__init__(config)
        self.heron_state = state

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self.heron_state.draining = True
        super().handle_exit(sig, frame)
        # uvicorn re-raises captured signals after shutting down; a drained SIGTERM is a
        # clean, expected stop, so the process exits 0 instead.
        if sig == signal.SIGTERM and sig in self._captured_signals:
            self._captured_signals.remove(sig)


def run_server(cfg: ServeConfig) -> int:
    """Serve until stopped. Returns the exit status: 0 after a clean stop or drain, 1 if the
    model failed to load."""
    check_bind(cfg)
    failure: list[str] = []
    server: _Server | None = None

    def on_fatal(message: str) -> None:
        logger.error("%s", message)
        failure.append(message)
        if server is not None:
            server.should_exit = True

    engine = AsyncEngineClient(cfg.model, cfg.engine, cfg.limits.max_waiting, on_fatal)
    name = cfg.served_model_name or _default_name(cfg.model)
    state = ServerState(
        engine=engine, metrics=Metrics(name), limits=cfg.limits, served_model_name=name
    )
    app = build_app(state)
    guarded = SecurityMiddleware(
        DrainGuard(app, state),
        api_key=cfg.api_key,
        loopback_only=is_loopback_host(cfg.host),
        cors_origins=cfg.cors_origins,
        max_body_bytes=cfg.limits.max_body_bytes,
        max_header_bytes=cfg.limits.max_header_bytes,
    )
    config = uvicorn.Config(
        guarded,
        host=cfg.host,
        port=cfg.port,
        log_level="info",
        timeout_graceful_shutdown=math.ceil(cfg.shutdown_timeout),
        h11_max_incomplete_event_size=cfg.limits.max_header_bytes,
        server_header=False,
    )
    server = _Server(config, state)
    try:
        if not failure:
            server.run()
    finally:
        engine.shutdown()
    return 1 if failure else 0


def _default_name(model: str) -> str:
    if os.path.exists(model):
        base = os.path.basename(model.rstrip("/"))
        return base.removesuffix(".gguf").lower()
    return model
