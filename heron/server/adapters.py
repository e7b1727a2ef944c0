"""LoRA adapters served on the command line's model, as vLLM serves them: named on the
command line (``--lora name=path``) or loaded and unloaded at run time
(``/v1/load_lora_adapter``), each answering to its own model name. A stored model with an
ADAPTER (Modelfile) runs on a loaded engine of its base model too, where the server runs
adapters (``shared_adapter_spec``), instead of loading an engine of its own.

A request whose ``model`` names an adapter resolves here to a ``ModelSpec`` whose ``base`` is
the command line's model and whose ``lora`` is the adapter's ``LoRARequest``: the request runs
on the base model's engine with that adapter. Dynamic loading reads only paths under the
directories the operator allowed (``--lora-dir``); symlinks are resolved before the check.
"""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import os
import re
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from heron.config import EngineConfig, LoRAConfig
from heron.lora.request import LoRARequest
from heron.server.common import APIError
from heron.store.adapters import MAX_ADAPTER_RANK

if TYPE_CHECKING:
    from heron.config import ModelConfig
    from heron.server.model_manager import ModelManager
    from heron.server.model_spec import ModelSpec
    from heron.store.store import ModelStore

# Adapter names are model names in every API, metric labels and log lines.
_NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:/@+-]{0,127}")


class BadAdapterError(ValueError):
    """A stored model's adapter does not load or does not fit its base model."""


def check_adapter(
    path: str, model_config: ModelConfig, max_rank: int, held: str = "float16"
) -> int:
    """Load ``path`` (a PEFT directory or a GGUF LoRA file) and check it against the base
    model, and that its factors fit the slots' ``held`` dtype (``LoRAConfig.held_dtype``);
    returns its rank. Reads the whole adapter; run it off the event loop. Raises
    ``heron.lora.LoRAError`` (a ValueError) naming the problem."""
    import torch

    from heron.lora import load_adapter
    from heron.lora.slots import check_fits

    weights = load_adapter(path, model_config, max_rank)
    check_fits(weights, getattr(torch, held))
    return int(weights.rank)


def engine_config_for(spec: ModelSpec, config: EngineConfig) -> EngineConfig:
    """The engine configuration of ``spec``: a stored model with an ADAPTER gets LoRA (one
    slot, sized to its adapter) when the server's configuration has none. Reads the adapter
    (a thread's work). Raises BadAdapterError."""
    if spec.lora is None or config.lora is not None:
        return config
    from heron.loader import load_checkpoint

    base = load_checkpoint(spec.path).config
    try:
        rank = check_adapter(spec.lora.path, base, MAX_ADAPTER_RANK)
    except (OSError, ValueError) as exc:
        raise BadAdapterError(f"model '{spec.name}': its ADAPTER cannot be used: {exc}") from None
    return dataclasses.replace(config, lora=LoRAConfig(max_loras=1, max_lora_rank=rank))


# int_ids of stored models' adapters on a shared engine: above any the registry hands out.
_STORED_IDS = 1 << 48


def shared_adapter_spec(spec: ModelSpec, host: ModelSpec) -> ModelSpec:
    """``spec`` (a stored model with an ADAPTER) running on the engine of ``host`` (its base
    model, loaded with adapters enabled): its name, template and parameters, ``host`` as its
    base, and an int_id of its own taken from its digest, so two stored adapters never share
    the engine's copy or cached blocks."""
    assert spec.lora is not None
    int_id = _STORED_IDS + int((spec.digest or "0")[:12], 16)
    lora = LoRARequest(name=spec.lora.name, int_id=int_id, path=spec.lora.path)
    return dataclasses.replace(spec, lora=lora, base=host.name)


def _fits(path: str, model_config: ModelConfig, max_rank: int, held: str) -> bool:
    """Whether the adapter at ``path`` loads on the model with ``model_config`` within
    ``max_rank`` and ``held`` slots. Reads the whole adapter; run it off the event loop."""
    try:
        check_adapter(path, model_config, max_rank, held)
    except (OSError, ValueError):
        return False
    return True


def adapter_parent(
    spec: ModelSpec, pinned: ModelSpec | None, store: ModelStore | None
) -> str | None:
    """The base model of an adapter: ``spec.base`` for one served on a loaded engine, else,
    for a stored model with an ADAPTER, the command line's or a stored model with the same
    weights and no adapter (None when there is none, or ``spec`` is no adapter)."""
    if spec.lora is None or spec.base is not None:
        return spec.base
    if pinned is not None and pinned.lora is None and pinned.path == spec.path:
        return pinned.name
    if store is None:
        return None
    from heron.server.model_spec import spec_from_store

    for stored in store.list():
        other = spec_from_store(store, stored)
        if other.lora is None and other.path == spec.path:
            return other.name
    return None


@dataclass(frozen=True, slots=True)
class Adapter:
    request: LoRARequest
    loaded_at: float  # wall-clock seconds
    rank: int


class AdapterRegistry:
    """The adapters of the command line's model, by lower-case name.

    ``allowed_dirs`` (resolved real paths) are where ``/v1/load_lora_adapter`` may read;
    empty means dynamic loading is off. ``int_id``s are never reused, so an adapter loaded
    again from another path never shares the engine's copy or cached blocks of the old one.
    """

    def __init__(self, allowed_dirs: list[str] | None = None) -> None:
        self.allowed_dirs = [_allowed_dir(d) for d in allowed_dirs or []]
        self.adapters: dict[str, Adapter] = {}
        self._ids = itertools.count(1)
        self._fits: dict[tuple[str, str], bool] = {}  # (adapter path, base name) -> fits

    @property
    def dynamic(self) -> bool:
        return bool(self.allowed_dirs)

    def __len__(self) -> int:
        return len(self.adapters)

    def find(self, name: str) -> Adapter | None:
        return self.adapters.get(name.lower())

    def spec(self, name: str, base: ModelSpec | None) -> ModelSpec | None:
        """The spec a request naming adapter ``name`` runs with: the base model's, with the
        adapter's name and ``LoRARequest``. None when ``name`` is not an adapter."""
        adapter = self.find(name)
        if adapter is None or base is None:
            return None
        return dataclasses.replace(
            base,
            name=adapter.request.name,
            aliases=frozenset({adapter.request.name.lower()}),
            modified_at=adapter.loaded_at,
            digest=None,
            stored=None,
            lora=adapter.request,
            base=base.name,
        )

    def specs(self, base: ModelSpec | None) -> list[ModelSpec]:
        """The spec of every adapter, in the order they were added."""
        found = (self.spec(a.request.name, base) for a in self.adapters.values())
        return [s for s in found if s is not None]

    async def on_base(self, spec: ModelSpec, models: ModelManager) -> ModelSpec:
        """``spec``, or for a stored model with an ADAPTER, ``spec`` on a loaded engine of
        its base model (the same weights, no adapter of its own; ``shared_adapter_spec``),
        mixed into that engine's batches, when the server runs adapters and this one loads
        there (targets and rank, checked once per adapter and base). Otherwise it loads an
        engine of its own."""
        lora = models.engine_config.lora
        if spec.lora is None or spec.base is not None or lora is None:
            return spec
        for model in list(models.loaded.values()):
            base = model.spec
            if base.lora is not None or base.path != spec.path or model.failure is not None:
                continue
            if not model.engine.alive or not model.engine.ready:
                continue
            key = (spec.lora.path, base.name)
            if key not in self._fits:
                config, rank = model.engine.model_config, lora.max_lora_rank
                self._fits[key] = await asyncio.to_thread(
                    _fits, spec.lora.path, config, rank, lora.held_dtype
                )
            if self._fits[key]:
                return shared_adapter_spec(spec, base)
        return spec

    def check_new(self, name: str, base: ModelSpec | None) -> None:
        """Refuse a name that is malformed, taken by an adapter or by the base model, or a
        registry without a base model. Raises APIError 400."""
        if base is None:
            raise APIError(
                400, "LoRA adapters need a model on the command line (heron serve MODEL)"
            )
        if not isinstance(name, str) or _NAME_RE.fullmatch(name) is None:
            raise APIError(
                400,
                f"invalid lora_name {str(name)[:80]!r}: 1 to 128 of [A-Za-z0-9_.:/@+-], "
                "starting with a letter, digit or _",
                param="lora_name",
            )
        if self.find(name) is not None or base.matches(name):
            raise APIError(
                400, f"the LoRA adapter '{name}' has already been loaded", param="lora_name"
            )

    def add(self, name: str, path: str, rank: int) -> LoRARequest:
        """Register adapter ``name`` at ``path`` (already checked); returns its request."""
        request = LoRARequest(name=name, int_id=next(self._ids), path=path)
        self.adapters[name.lower()] = Adapter(request, time.time(), rank)
        return request

    def remove(self, name: str) -> Adapter:
        """Unregister ``name``. Raises APIError 404 when no such adapter is loaded."""
        adapter = self.adapters.pop(name.lower(), None)
        if adapter is None:
            shown = name if len(name) <= 64 else name[:64] + "..."
            raise APIError(404, f"the LoRA adapter '{shown}' cannot be found", "not_found")
        return adapter

    def allowed_path(self, path: str) -> str:
        """The real path of ``path`` if it lies under an allowed directory. Raises APIError:
        403 while dynamic loading is off or for a path outside every allowed directory, 400
        for a relative path, one with a ``..`` part, or one that does not exist."""
        if not self.dynamic:
            raise disabled_error()
        if not isinstance(path, str) or not path or "\x00" in path:
            raise APIError(400, "lora_path must be a non-empty path", param="lora_path")
        if not os.path.isabs(path):
            raise APIError(400, "lora_path must be an absolute path", param="lora_path")
        if ".." in path.replace("\\", "/").split("/"):
            raise APIError(400, "lora_path must not contain '..'", param="lora_path")
        # Checked on the resolved path, before anything is read there: a symlink inside an
        # allowed directory that points outside it is outside.
        real = os.path.realpath(path)
        if not any(_under(real, d) for d in self.allowed_dirs):
            raise APIError(
                403,
                "lora_path is outside the directories this server loads adapters from (--lora-dir)",
                "permission",
                param="lora_path",
            )
        if not os.path.exists(real):
            raise APIError(400, "lora_path: no such file or directory", param="lora_path")
        return real


def add_static(
    registry: AdapterRegistry,
    base: ModelSpec,
    modules: list[tuple[str, str]],
    max_rank: int,
    held: str = "float16",
) -> None:
    """Register the ``--lora name=path`` adapters, each checked against ``base`` (the
    operator's paths: no directory rule). Raises ValueError naming the first bad one."""
    if not modules:
        return
    from heron.loader import load_checkpoint

    config = load_checkpoint(base.path).config
    for name, path in modules:
        try:
            registry.check_new(name, base)
        except APIError as exc:
            raise ValueError(f"--lora {name}: {exc.message}") from None
        real = os.path.realpath(os.path.expanduser(path))
        if not os.path.exists(real):
            raise ValueError(f"--lora {name}={path}: no such file or directory")
        try:
            rank = check_adapter(real, config, max_rank, held)
        except (OSError, ValueError) as exc:
            raise ValueError(f"--lora {name}={path}: {exc}") from None
        registry.add(name, real, rank)


def disabled_error() -> APIError:
    return APIError(
        403,
        "loading LoRA adapters at run time is disabled: start heron serve with "
        "--lora-dir DIR to allow adapters under DIR",
        "permission",
    )


def parse_lora_option(value: str) -> tuple[str, str]:
    """``--lora name=path`` as (name, path). Raises ValueError."""
    name, sep, path = value.partition("=")
    if not sep or not name.strip() or not path.strip():
        raise ValueError(f"--lora takes name=path, got {value!r}")
    return name.strip(), path.strip()


def _allowed_dir(directory: str) -> str:
    real = os.path.realpath(os.path.expanduser(directory))
    if not os.path.isdir(real):
        raise ValueError(f"--lora-dir {directory}: not a directory")
    return real


def _under(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip(os.sep) + os.sep)
