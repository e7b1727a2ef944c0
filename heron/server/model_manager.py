"""Several models behind one server: loaded on first request, unloaded when their
``keep_alive`` runs out, at most ``max_loaded`` at a time. Each loaded model is its own
engine-core process (``AsyncEngineClient``; N routed replicas: ``DataParallelClient``). A
model counts as busy while the engine has requests in flight; its expiry clock restarts when
the last one ends, as Ollama's does. Loading, unloading and eviction happen here, on the
event loop; the blocking parts run in threads.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import math
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from heron.config import EngineConfig
from heron.engine.process import CoreProcess, start_core_process
from heron.engine.protocol import EngineStats
from heron.engine.replica import DataParallelPlan
from heron.proposer.options import with_modelfile_speculation
from heron.server.adapters import AdapterRegistry, BadAdapterError, engine_config_for
from heron.server.common import APIError
from heron.server.model_spec import LoadedModel, ModelSpec, check_stored, spec_from_store

if TYPE_CHECKING:
    from heron.store.store import ModelStore

logger = logging.getLogger(__name__)

DEFAULT_KEEP_ALIVE_S = 300.0  # Ollama's default, 5m
LOAD_TIMEOUT_S = 300.0  # Ollama's OLLAMA_LOAD_TIMEOUT
REAP_INTERVAL_S = 0.25
CLAIM_S = 2.0
# A dead pinned engine is restarted unless it died this often in the window (then: on_fatal).
MAX_RESTARTS = 5
RESTART_WINDOW_S = 300.0


class ModelManager:
    """Owns every engine process of the server.

    ``get`` returns a loaded model (loading it, and evicting an idle one when at the cap, if
    needed) or raises APIError: 404 for an unknown name, 400 for an invalid one, 503 when every
    loaded model is busy and none can be evicted, 500 when loading fails.
    """

    def __init__(
        self,
        engine_config: EngineConfig,
        store: ModelStore | None,
        max_waiting: int = 256,
        max_loaded: int = 3,
        default_keep_alive: float = DEFAULT_KEEP_ALIVE_S,
        on_fatal: Callable[[str], None] | None = None,
    ) -> None:
        if max_loaded < 1:
            raise ValueError("max_loaded must be at least 1")
        self.engine_config = engine_config
        self.store = store
        self.max_waiting = max_waiting
        self.max_loaded = max_loaded
        self.default_keep_alive = default_keep_alive
        self.on_fatal = on_fatal  # called when the pinned model's engine dies or fails to load
        self.data_parallel = DataParallelPlan()  # replicas per model (--data-parallel-size)
        self.pinned: ModelSpec | None = None
        self.loaded: dict[str, LoadedModel] = {}  # by spec.name
        self._loading: dict[str, asyncio.Task[LoadedModel]] = {}
        self._reaper: asyncio.Task[None] | None = None
        self._embedding_paths: dict[tuple[str, float], bool] = {}
        self._restarting: set[str] = set()  # pinned models whose dead engine is being replaced
        self._restart_times: list[float] = []  # monotonic
        self._closed = False
        self.adapters = AdapterRegistry()  # served on the pinned model (--lora)

    # ------------------------------------------------------------------ resolution
    def resolve(self, name: str) -> ModelSpec:
        """The model a client's name refers to. Raises APIError 400 (empty) or 404. Never touches the
        filesystem with the name itself: store names go through the strict name grammar."""
        if not name:
            raise APIError(400, "model is required", param="model")
        if self.pinned is not None and self.pinned.matches(name):
            return self.pinned
        adapter = self.adapters.spec(name, self.pinned)
        if adapter is not None:
            return adapter
        for loaded in self.loaded.values():
            if loaded.spec.matches(name):
                return loaded.spec
        shown = name if len(name) <= 64 else name[:64] + "..."
        if self.store is None:
            raise APIError(404, f"model '{shown}' not found", "not_found", param="model")
        from heron.store.names import InvalidNameError
        from heron.store.store import ModelNotFoundError

        try:
            stored = self.store.get(name)
        except (InvalidNameError, ModelNotFoundError):
            # A name outside the grammar cannot name a stored model: it is not found either.
            raise APIError(404, f"model '{shown}' not found", "not_found", param="model") from None
        return spec_from_store(self.store, stored)

    def pin(self, spec: ModelSpec, process: CoreProcess | None = None) -> LoadedModel:
        """Start loading the command line's model now (before the server listens), so that a
        load failure ends the server. Kept loaded unless a request's keep_alive says
        otherwise. ``process``: a core process the command line started early."""
        self.pinned = spec
        try:
            self._check_stored(spec)
        except APIError as exc:  # `heron serve` prints it and exits
            raise ValueError(str(exc)) from None
        loaded = self._start(spec, pinned=True, process=process)
        self.loaded[spec.name] = loaded
        return loaded

    # ------------------------------------------------------------------ loading
    async def get(
        self, name: str, keep_alive: float | None = None, task: str | None = None
    ) -> LoadedModel:
        """Resolve ``name``, load it if needed, wait until it is ready, and set its expiry from
        ``keep_alive`` (seconds; None: the model's current setting or the default).

        ``task`` ("generate" or "embed") is checked before anything loads: asking an
        embedding model to generate, or a generating model to embed, is a 400."""
        spec = await self.adapters.on_base(self.resolve(name), self)
        if spec.base is not None:  # an adapter: a request on its base model's engine
            return (await self.get(spec.base, keep_alive, task)).with_spec(spec)
        if task is not None and not self.supports(spec, task):
            shown = name if len(name) <= 64 else name[:64] + "..."
            what = "embeddings" if task == "embed" else task
            raise APIError(400, f'"{shown}" does not support {what}', param="model")
        self._ensure_reaper()
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        while spec.name in self._restarting and time.monotonic() < deadline:
            await asyncio.sleep(0.05)  # the pinned model's new engine is about to take over
        loaded = self.loaded.get(spec.name)
        if loaded is None or not loaded.engine.alive:
            if loaded is not None:
                await self._unload(loaded)
            loading = self._loading.get(spec.name)
            if loading is None:
                loading = asyncio.ensure_future(self._load(spec))
                self._loading[spec.name] = loading
                loading.add_done_callback(functools.partial(self._loaded_or_failed, spec.name))
            loaded = await asyncio.shield(loading)
        await self._wait_ready(loaded)
        self.touch(loaded, keep_alive)
        return loaded

    def supports(self, spec: ModelSpec, task: str) -> bool:
        """Whether the model can ``task``: "embed" for encoders, "generate" for the rest.
        Read from the loaded engine, else from the checkpoint's config.json (cached)."""
        loaded = self.loaded.get(spec.name)
        if loaded is not None:
            embedding = loaded.engine.is_embedding
        else:
            key = (spec.path, spec.modified_at)
            if key not in self._embedding_paths:
                from heron.engine.embedder import is_embedding_checkpoint

                self._embedding_paths[key] = is_embedding_checkpoint(spec.path)
            embedding = self._embedding_paths[key]
        return embedding if task == "embed" else not embedding

    def _loaded_or_failed(self, name: str, _task: asyncio.Future[LoadedModel]) -> None:
        self._loading.pop(name, None)

    def touch(self, loaded: LoadedModel, keep_alive: float | None) -> None:
        """Set the model's keep_alive and restart its expiry clock. A request without one
        gets the server default, as in Ollama; the command line's model keeps its own."""
        if keep_alive is not None:
            loaded.keep_alive = keep_alive
        elif not loaded.pinned:
            loaded.keep_alive = self.default_keep_alive
        loaded.expires_at = _expiry(loaded.keep_alive)
        # The caller is about to submit a request: keep the reaper off until it shows up as
        # in flight, or a keep_alive of 0 could unload the model under it.
        loaded.claimed_until = time.monotonic() + CLAIM_S

    async def _load(self, spec: ModelSpec) -> LoadedModel:
        await asyncio.to_thread(self._check_stored, spec)
        await self._make_room(spec.name)
        try:
            loaded = await asyncio.to_thread(self._start, spec, False)
        except BadAdapterError as exc:
            raise APIError(400, str(exc), param="model") from None
        except (OSError, ValueError) as exc:  # unreadable or invalid checkpoint header
            raise APIError(
                500, f"failed to load model '{spec.name}': {exc}", "server_error"
            ) from None
        self.loaded[spec.name] = loaded
        return loaded

    def _check_stored(self, spec: ModelSpec) -> None:
        check_stored(spec, self.store)

    def _start(
        self, spec: ModelSpec, pinned: bool, process: CoreProcess | None = None
    ) -> LoadedModel:
        if self.data_parallel.enabled:  # its client starts the replicas, each pinned
            return self._start_client(spec, pinned, None)
        # Started first: the core imports the engine while this reads the header (see process).
        process = process or start_core_process()
        try:
            return self._start_client(spec, pinned, process)
        except BaseException:
            process.process.kill()
            process.conn.close()
            raise

    def _start_client(
        self, spec: ModelSpec, pinned: bool, process: CoreProcess | None
    ) -> LoadedModel:
        from heron.engine.dp_client import start_engine

        holder: list[LoadedModel] = []

        def fatal(message: str) -> None:
            if holder:
                holder[0].failure = message
            if not pinned:
                return
            if holder and holder[0].engine.ready and self._may_restart(spec.name):
                # Died after loading (a crash, `kill -9`): its requests have failed; a new
                # engine takes over and /ready answers 503 until it is loaded.
                self._restarting.add(spec.name)
                threading.Thread(
                    target=self._restart_pinned,
                    args=(holder[0], message),
                    name="heron-engine-restart",
                    daemon=True,
                ).start()
            elif self.on_fatal is not None:
                self.on_fatal(message)

        config = engine_config_for(spec, self.engine_config)
        config = with_modelfile_speculation(spec.parameters, config)
        engine = start_engine(
            spec.path, config, self.max_waiting, fatal, spec.template, process, self.data_parallel
        )
        keep = math.inf if pinned else self.default_keep_alive
        loaded = LoadedModel(spec, engine, pinned, keep, _expiry(keep))
        holder.append(loaded)
        return loaded

    def _may_restart(self, name: str) -> bool:
        if self._closed or name in self._restarting:
            return False
        now = time.monotonic()
        self._restart_times = [t for t in self._restart_times if now - t < RESTART_WINDOW_S]
        if len(self._restart_times) >= MAX_RESTARTS:
            return False
        self._restart_times.append(now)
        return True

    def _restart_pinned(self, old: LoadedModel, reason: str) -> None:
        """Replace the pinned model's dead engine with a new one (runs in its own thread)."""
        logger.error("the engine of %s died (%s); restarting it", old.name, reason)
        try:
            with contextlib.suppress(Exception):
                old.engine.shutdown(timeout=5.0)
            try:
                new = self._start(old.spec, pinned=True)
            except Exception as exc:
                if self.on_fatal is not None:
                    self.on_fatal(f"cannot restart the engine of {old.name}: {exc}")
                return
            new.keep_alive, new.expires_at = old.keep_alive, old.expires_at
            if self._closed or self.loaded.get(old.name) is not old:
                new.engine.shutdown()
                return
            self.loaded[old.name] = new
        finally:
            self._restarting.discard(old.name)

    async def _wait_ready(self, loaded: LoadedModel) -> None:
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        while not loaded.engine.ready:
            if loaded.failure is not None or not loaded.engine.alive:
                await self._unload(loaded)
                reason = loaded.failure or "the engine process exited"
                raise APIError(
                    500, f"failed to load model '{loaded.name}': {reason}", "server_error"
                )
            if time.monotonic() > deadline:
                await self._unload(loaded)
                raise APIError(500, f"timed out loading model '{loaded.name}'", "server_error")
            await asyncio.sleep(0.05)

    async def _make_room(self, incoming: str) -> None:
        """Evict idle models until one more fits; wait for one to go idle if all are busy."""
        deadline = time.monotonic() + LOAD_TIMEOUT_S
        while len(self.loaded) >= self.max_loaded:
            idle = [m for m in self.loaded.values() if not m.busy and m.name != incoming]
            if idle:
                victim = min(idle, key=lambda m: (m.pinned, m.expires_at))
                logger.info("unloading %s to make room for %s", victim.name, incoming)
                await self._unload(victim)
                continue
            if time.monotonic() > deadline:
                raise APIError(
                    503,
                    "server busy: every loaded model is in use",
                    "overloaded",
                    headers={"Retry-After": "1"},
                )
            await asyncio.sleep(0.1)

    # ------------------------------------------------------------------ unloading
    async def unload(self, name: str) -> bool:
        """Unload ``name`` now if it is loaded and idle; if busy, once its requests end.
        Returns whether it was loaded."""
        spec = self.resolve(name)
        loaded = self.loaded.get(spec.name)
        if loaded is None:
            return False
        loaded.keep_alive = 0.0
        loaded.expires_at = 0.0
        if not loaded.busy:
            await self._unload(loaded)
        return True

    async def _unload(self, loaded: LoadedModel) -> None:
        if self.loaded.get(loaded.name) is loaded:
            del self.loaded[loaded.name]
            await asyncio.to_thread(loaded.engine.shutdown)

    def _ensure_reaper(self) -> None:
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.ensure_future(self._reap_loop())

    async def _reap_loop(self) -> None:
        while True:
            await asyncio.sleep(REAP_INTERVAL_S)
            with contextlib.suppress(Exception):
                await self.reap()

    async def reap(self) -> None:
        """One pass: busy models push their expiry forward; expired idle models unload; models
        whose engine died are dropped."""
        now = time.time()
        for loaded in list(self.loaded.values()):
            if loaded.spec.name in self._loading:
                continue
            if loaded.pinned and not loaded.engine.alive:
                continue  # being restarted (or the server is about to stop)
            if loaded.busy or loaded.claimed_until > time.monotonic():
                if loaded.busy and loaded.keep_alive > 0:
                    loaded.expires_at = max(loaded.expires_at, _expiry(loaded.keep_alive))
                continue
            dead = loaded.engine.ready and not loaded.engine.alive
            if dead or (loaded.engine.ready and now >= loaded.expires_at):
                logger.info("unloading %s (%s)", loaded.name, "died" if dead else "expired")
                await self._unload(loaded)

    # ------------------------------------------------------------------ reporting
    def running(self) -> list[LoadedModel]:
        """Loaded models, less those whose keep_alive ran out (the reaper is about to unload
        them)."""
        now = time.time()
        return [
            m
            for m in self.loaded.values()
            if m.engine.ready and m.engine.alive and (m.busy or m.expires_at > now)
        ]

    @property
    def pinned_model(self) -> LoadedModel | None:
        if self.pinned is None:
            return None
        return self.loaded.get(self.pinned.name)

    def engine_stats(self) -> list[tuple[str, int, EngineStats]]:
        """(model name, engine id, latest stats) of every loaded engine, for /metrics."""
        return [(m.name, id(m.engine), m.engine.stats) for m in self.loaded.values()]

    def adapter_counts(self) -> dict[str, int]:
        """LoRA adapters served per model, for /metrics: the pinned model's (--lora and
        loaded at run time), and one per loaded stored model with an ADAPTER."""
        counts = {m.name: 1 for m in self.loaded.values() if m.spec.lora is not None}
        if self.pinned is not None:
            counts[self.pinned.name] = counts.get(self.pinned.name, 0) + len(self.adapters)
        return counts

    def shutdown(self) -> None:
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
        for loaded in list(self.loaded.values()):
            loaded.engine.shutdown()
        self.loaded.clear()


def _expiry(keep_alive: float) -> float:
    return math.inf if math.isinf(keep_alive) else time.time() + keep_alive
