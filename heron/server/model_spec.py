"""What the model manager serves: ``ModelSpec`` (a model to load, how clients name it, and
its Modelfile defaults), ``LoadedModel`` (one with a live engine), the specs of stored and
command-line models, and keep_alive durations."""

from __future__ import annotations

import dataclasses
import math
import os
import re
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from heron.lora.request import LoRARequest
from heron.server.common import APIError

if TYPE_CHECKING:
    from heron.engine.core_client import AsyncEngineClient
    from heron.engine.dp_client import DataParallelClient
    from heron.store.store import ModelStore, StoredModel


@dataclass(slots=True)
class ModelSpec:
    """What to load and how clients name it, plus the Modelfile's defaults."""

    name: str  # display name: "smollm2:latest", or the served name of a path
    path: str  # GGUF file or HF directory
    digest: str | None  # manifest sha256 hex for stored models; None for plain paths
    size: int
    modified_at: float
    parameters: dict[str, Any] = field(default_factory=dict)
    template: str | None = None
    system: str | None = None
    license: list[str] = field(default_factory=list)
    messages: list[dict[str, str]] = field(default_factory=list)
    stored: StoredModel | None = None
    aliases: frozenset[str] = frozenset()  # other names that mean this model (lower-case)
    lora: LoRARequest | None = None  # the adapter every request runs with (Modelfile ADAPTER)
    base: str | None = None  # an adapter on this loaded model runs on its engine (--lora)

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("a model needs a name")

    def matches(self, name: str) -> bool:
        low = name.lower()
        return low == self.name.lower() or low in self.aliases


@dataclass(slots=True)
class LoadedModel:
    """A model with a live (or loading) engine process."""

    spec: ModelSpec
    engine: AsyncEngineClient | DataParallelClient
    pinned: bool  # the model named on `heron serve`'s command line
    keep_alive: float  # seconds; math.inf for ever
    expires_at: float  # wall-clock seconds
    loaded_at: float = field(default_factory=time.time)
    failure: str | None = None
    claimed_until: float = 0.0  # monotonic; see ModelManager.touch
    cache: dict[str, Any] = field(default_factory=dict)  # per-model objects the APIs build once

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def busy(self) -> bool:
        return self.engine.num_in_flight > 0

    def with_spec(self, spec: ModelSpec) -> LoadedModel:
        """This model's engine serving ``spec`` (an adapter on it): a view for one request;
        the manager keeps, expires and unloads this model, never the view."""
        return dataclasses.replace(self, spec=spec)


_DURATION_PART = re.compile(r"(\d*\.?\d*)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_S = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_duration(value: float | str) -> float:
    """Seconds, ``math.inf`` for any negative value (for ever). Takes a number of seconds or
    a Go duration such as "5m", "1h30m", "-1". Raises ValueError."""
    if isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            seconds = _parse_go_duration(text, value)
    else:
        seconds = float(value)
    if math.isnan(seconds):
        raise ValueError(f'time: invalid duration "{value}"')
    return math.inf if seconds < 0 else seconds


def _parse_go_duration(text: str, original: str) -> float:
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    pos, total = 0, 0.0
    while body and pos < len(body):
        m = _DURATION_PART.match(body, pos)
        if m is None or m.group(1) in ("", "."):
            break
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if not body or pos != len(body):
        raise ValueError(f'time: invalid duration "{original}"')
    return sign * total


def spec_from_store(store: ModelStore, stored: StoredModel) -> ModelSpec:
    adapter = store.adapter_path(stored)
    lora = None if adapter is None else LoRARequest(stored.name.display, 1, str(adapter))
    return ModelSpec(
        name=stored.name.display,
        path=str(store.model_path(stored)),
        digest=stored.digest.removeprefix("sha256:"),
        size=stored.size,
        modified_at=stored.modified_at,
        parameters=dict(stored.parameters),
        template=stored.template,
        system=stored.system,
        license=list(stored.license),
        messages=list(stored.messages),
        stored=stored,
        aliases=_aliases(stored.name.display),
        lora=lora,
    )


def spec_from_path(path: str, name: str) -> ModelSpec:
    """A model given by path on the command line (not in the store)."""
    files = [path]
    if os.path.isdir(path):
        files = [os.path.join(r, n) for r, _, ns in os.walk(path) for n in ns]
    size = sum(os.path.getsize(f) for f in files)
    mtime = max(os.stat(f).st_mtime for f in files)
    return ModelSpec(
        name=name, path=path, digest=None, size=size, modified_at=mtime, aliases=_aliases(name)
    )


def _aliases(name: str) -> frozenset[str]:
    """``x`` and ``x:latest`` name the same model, as do the long forms with namespace."""
    low = name.lower()
    out = {low}
    if ":" not in low.rsplit("/", 1)[-1]:
        out.add(f"{low}:latest")
    elif low.endswith(":latest"):
        out.add(low.removesuffix(":latest"))
    return frozenset(out)


def check_stored(spec: ModelSpec, store: ModelStore | None) -> None:
    """Before a stored model loads: its blobs (see ``check_blobs``) and its TEMPLATE, which a
    model stored before create checked templates may have broken (400). Raises APIError."""
    check_blobs(spec, store)
    if spec.template:
        from heron.prompt import check_template

        try:
            check_template(spec.template)
        except ValueError as exc:
            raise APIError(
                400,
                f"model '{spec.name}' has a TEMPLATE that does not parse: {exc}; create "
                "the model again with a fixed TEMPLATE",
                param="model",
            ) from None


def check_blobs(spec: ModelSpec, store: ModelStore | None) -> None:
    """Refuse a stored model whose blobs changed since they were verified: each is re-hashed
    only if its file's stamp (size, mtime, inode) changed. Raises APIError 500 naming the
    model and the repair."""
    if spec.stored is None or store is None:
        return
    bad = [d for d in spec.stored.manifest.digests() if not store.blobs.check(d)]
    if bad:
        raise APIError(
            500,
            f"model '{spec.name}' is corrupted: blob {bad[0]} no longer matches its digest "
            f"(changed or damaged on disk); repair it with `heron pull {spec.name}` (or "
            "create it again)",
            "server_error",
        )
