"""Start ``heron serve``: checks the bind address, starts the engine process, runs uvicorn,
drains on SIGTERM, and rolls the replicas (a rolling restart) on SIGHUP."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

import uvicorn

from heron.config import EngineConfig, LoRAConfig
from heron.engine.process import CoreProcess
from heron.engine.replica import DataParallelPlan, ReplicaFactory
from heron.env import is_loopback_host
from heron.server.adapters import AdapterRegistry, add_static
from heron.server.app import DrainGuard, build_app
from heron.server.common import APIError
from heron.server.http import ConnectionLimits, http_protocol
from heron.server.metrics import Metrics
from heron.server.model_manager import ModelManager
from heron.server.model_spec import ModelSpec, parse_duration, spec_from_path, spec_from_store
from heron.server.replicas import start_rolling_restart
from heron.server.security import SecurityMiddleware
from heron.server.state import ServerLimits, ServerState
from heron.store.adapters import MAX_ADAPTER_RANK
from heron.store.resolve import resolve_model
from heron.store.store import ModelStore

logger = logging.getLogger(__name__)


class InsecureBindError(SystemExit):
    pass


@dataclass(slots=True)
class ServeConfig:
    model: str | None = None  # loaded at start and kept; others load on demand from the store
    host: str = "127.0.0.1"
    port: int = 11434
    api_key: str | None = None
    allow_insecure_public_bind: bool = False
    cors_origins: list[str] = field(default_factory=list)
    served_model_name: str | None = None
    shutdown_timeout: float = 30.0
    max_loaded_models: int = 3
    keep_alive: str = "5m"
    models_dir: str | None = None  # the store; default HERON_MODELS
    header_timeout: float = 10.0  # seconds for a whole request head
    body_timeout: float = 30.0  # seconds a request body may stall (see heron/server/http.py)
    max_connections_per_client: int = 128  # open connections from one client address
    limits: ServerLimits = field(default_factory=ServerLimits)
    engine: EngineConfig = field(default_factory=EngineConfig)
    lora_modules: list[tuple[str, str]] = field(default_factory=list)  # --lora name=path
    lora_dirs: list[str] = field(default_factory=list)  # where load_lora_adapter may read
    # Engine replicas per model behind the router (heron/engine/dp_client.py); a factory
    # places them elsewhere (default: local processes pinned to disjoint cores).
    data_parallel_size: int = 1
    router_policy: str = "prefix"  # or "round_robin"
    replica_factory: ReplicaFactory | None = None

    def __post_init__(self) -> None:
        if not 0 < self.port < 65536:
            raise ValueError(f"port must be in 1..65535, got {self.port}")
        if self.max_loaded_models < 1:
            raise ValueError("max_loaded_models must be at least 1")
        if self.shutdown_timeout < 0:
            raise ValueError("shutdown_timeout must be non-negative")
        if not (self.header_timeout > 0 and self.body_timeout > 0):
            raise ValueError("--header-timeout and --body-timeout must be positive")
        if self.max_connections_per_client < 1:
            raise ValueError("--max-connections-per-client must be at least 1")
        if (self.lora_modules or self.lora_dirs) and self.model is None:
            raise ValueError("--lora and --lora-dir serve adapters on a MODEL: name one")
        if (self.lora_modules or self.lora_dirs) and self.engine.lora is None:
            self.engine.lora = LoRAConfig()
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

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """uvicorn's SIGINT / SIGTERM handling, and SIGHUP: a rolling restart of the command
        line's model's replicas (as nginx reloads on SIGHUP). Handled on the event loop,
        never inside the signal handler: starting one takes the replicas' lock."""
        with super().capture_signals():
            if threading.current_thread() is not threading.main_thread():
                yield
                return
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGHUP, self._roll_replicas)
            try:
                yield
            finally:
                loop.remove_signal_handler(signal.SIGHUP)

    def _roll_replicas(self) -> None:
        if self.heron_state.draining:
            return
        try:
            name, progress = start_rolling_restart(self.heron_state)
        except APIError as exc:
            logger.warning("SIGHUP: no rolling restart: %s", exc.message)
            return
        logger.info("SIGHUP: rolling restart of %s's replicas %s", name, progress.order)


def run_server(cfg: ServeConfig, process: CoreProcess | None = None) -> int:
    """Serve until stopped. Returns the exit status: 0 after a clean stop or drain, 1 if the
    model failed to load. ``process``: a core process started early for ``cfg.model``."""
    check_bind(cfg)
    failure: list[str] = []
    server: _Server | None = None

    def on_fatal(message: str) -> None:
        logger.error("%s", message)
        failure.append(message)
        if server is not None:
            server.should_exit = True

    store = ModelStore(Path(cfg.models_dir) if cfg.models_dir else None)
    keep_alive = parse_duration(cfg.keep_alive)
    models = ModelManager(
        cfg.engine,
        store,
        max_waiting=cfg.limits.max_waiting,
        max_loaded=cfg.max_loaded_models,
        default_keep_alive=keep_alive,
        on_fatal=on_fatal,
    )
    models.adapters = AdapterRegistry(cfg.lora_dirs)
    models.data_parallel = DataParallelPlan(
        cfg.data_parallel_size, cfg.replica_factory, cfg.router_policy
    )
    if models.data_parallel.enabled and process is not None:
        process.kill()  # replicas start pinned, in the data-parallel client
        process = None
    names: list[str] = []
    if cfg.model is not None:
        names.append(pin_command_line_model(models, store, cfg, process))
    state = ServerState(models=models, metrics=Metrics(names), limits=cfg.limits)
    state.drain_timeout_s = cfg.shutdown_timeout
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
        http=http_protocol(
            ConnectionLimits(
                max_head_bytes=cfg.limits.max_header_bytes,
                head_timeout_s=cfg.header_timeout,
                body_timeout_s=cfg.body_timeout,
                max_per_client=cfg.max_connections_per_client,
            )
        ),
        h11_max_incomplete_event_size=cfg.limits.max_header_bytes,
        server_header=False,
    )
    server = _Server(config, state)
    try:
        if not failure:
            server.run()
    finally:
        models.shutdown()
    return 1 if failure else 0


def pin_command_line_model(
    models: ModelManager, store: ModelStore, cfg: ServeConfig, process: CoreProcess | None = None
) -> str:
    """Register the ``--lora`` adapters on the command line's model (each checked against it)
    and start loading it; returns its name. Raises ValueError or FileNotFoundError."""
    assert cfg.model is not None
    spec = command_line_model(store, cfg.model, cfg.served_model_name)
    if spec.lora is not None and (cfg.lora_modules or cfg.lora_dirs):
        raise ValueError(f"{spec.name} has an ADAPTER of its own: serve its base model with --lora")
    lora = cfg.engine.lora
    rank = lora.max_lora_rank if lora is not None else MAX_ADAPTER_RANK
    held = lora.held_dtype if lora is not None else "float16"
    add_static(models.adapters, spec, cfg.lora_modules, rank, held)
    models.pin(spec, process)
    return spec.name


def command_line_model(store: ModelStore, model: str, served_name: str | None) -> ModelSpec:
    """``heron serve MODEL``: a stored model's name, else a GGUF file / HF directory path or
    the name of a model a Python package ships. Raises FileNotFoundError if none fits."""
    from heron.store.names import InvalidNameError
    from heron.store.store import ModelNotFoundError

    if not os.path.exists(model):
        try:
            spec = spec_from_store(store, store.get(model))
        except (InvalidNameError, ModelNotFoundError):
            pass
        else:
            if served_name:
                spec.name, spec.aliases = served_name, frozenset({served_name.lower()})
            return spec
    path = resolve_model(model)
    name = served_name or _default_name(model)
    return spec_from_path(path, name)


def _default_name(model: str) -> str:
    if os.path.exists(model):
        base = os.path.basename(model.rstrip("/"))
        return base.removesuffix(".gguf").lower()
    return model
