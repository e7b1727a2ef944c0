"""Heron's native CPU kernels: built once at install time, one module per ISA level, the best
level this CPU runs chosen at run time (``heron.kernels.isa``).

``pip install`` (``setup.py``) compiles ``csrc/*.cpp`` into ``heron.kernels._cpu_scalar``,
``_cpu_avx2`` and ``_cpu_avx512``; nothing compiles at import or while serving. The first
``cpu_kernels()`` call imports the chosen level's module (``kernels_isa()`` names it) and logs
it. Where the install built no kernels (a source install without a compiler at the time) it
falls back to compiling that one level with ``torch.utils.cpp_extension`` into
``~/.cache/heron/kernels/<key>``, saying so. Off x86-64 there are no kernels: callers keep the
plain torch path, as they do with ``HERON_KERNELS=0`` or when that fallback fails.
"""

from __future__ import annotations

import fcntl
import hashlib
import importlib
import importlib.util
import logging
import platform
import sys
import threading
import time
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from torch import nn

from heron import env
from heron.kernels import isa
from heron.kernels.isa import IsaLevel

logger = logging.getLogger(__name__)

# KV cache dtypes the attention kernels read and write (float16 is rounded when written).
CACHE_DTYPES = (torch.float32, torch.float16)
_CSRC = Path(__file__).parent / "csrc"
_lock = threading.Lock()
_module: Kernels | None = None
_level: IsaLevel | None = None
_tried = False
_loaded: dict[str, Kernels] = {}  # by level name: each level is imported (or built) once


class Kernels(Protocol):
    """The compiled module as Python sees it (bindings in ``csrc/bindings.cpp``). Tensors are
    float32 unless said otherwise; ``*_`` functions work in place."""

    # Linears on GGUF blocks (``heron.kernels.quant``): x [M, K] -> [M, N].
    def linear_q4_1(
        self,
        x: torch.Tensor,
        qs: torch.Tensor,
        d: torch.Tensor,
        m: torch.Tensor,
        bias: torch.Tensor | None,
    ) -> torch.Tensor: ...
    def linear_q8_0(
        self, x: torch.Tensor, qs: torch.Tensor, d: torch.Tensor, bias: torch.Tensor | None
    ) -> torch.Tensor: ...
    def quantize_q4_1(self, w: torch.Tensor) -> list[torch.Tensor]: ...
    def quantize_q8_0(self, w: torch.Tensor) -> list[torch.Tensor]: ...
    def quantize_rows(self, x: torch.Tensor) -> list[torch.Tensor]: ...
    def pack_q4_1(
        self, qs: torch.Tensor, d: torch.Tensor, m: torch.Tensor
    ) -> list[torch.Tensor]: ...
    def pack_q8_0(self, qs: torch.Tensor, d: torch.Tensor) -> list[torch.Tensor]: ...
    def has_packed(self) -> bool: ...
    def has_avx2(self) -> bool: ...
    def has_vnni(self) -> bool: ...
    # Layer ops.
    def rms_norm(self, x: torch.Tensor, w: torch.Tensor, eps: float) -> torch.Tensor: ...
    def add_rms_norm_(
        self, x: torch.Tensor, residual: torch.Tensor, w: torch.Tensor, eps: float
    ) -> torch.Tensor: ...
    def rope_(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> None: ...
    def silu_mul(self, gate_up: torch.Tensor) -> torch.Tensor: ...
    def cache_write_(
        self,
        k: torch.Tensor,
        v: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        slots: torch.Tensor,
    ) -> None: ...
    def paged_decode_attention(
        self,
        q: torch.Tensor,
        k_cache: torch.Tensor,
        v_cache: torch.Tensor,
        block_table: torch.Tensor,
        context_lens: torch.Tensor,
        scale: float,
        window: int,
        softcap: float,
    ) -> torch.Tensor: ...

    # LoRA (``heron.lora.layer``): y [T, N] += (x[t] @ a[s]) @ b[s] per row t with slot
    # s = token_slots[t] >= 0; a [S, K, R], b [S, R, N], spans [S, blocks, 3].
    def lora_add_(
        self,
        y: torch.Tensor,
        x: torch.Tensor,
        a: torch.Tensor,
        b: torch.Tensor,
        spans: torch.Tensor,
        token_slots: torch.Tensor,
    ) -> None: ...

    # The fused decode layer (``heron.kernels.fused``): classes, so typed loosely here.
    LinearWeights: Any
    LayerWeights: Any
    DecodeStack: Any
    decode_layer_: Any


def cache_dir() -> Path:
    """Where kernels built on demand live: ``$HERON_CACHE/kernels`` (``heron.env``)."""
    return env.cache_dir() / "kernels"


def kernels_isa() -> str | None:
    """The ISA level of the kernels ``cpu_kernels()`` loaded (``scalar``, ``avx2`` or
    ``avx512``); None before that or where it returned None (torch ops)."""
    return _level.name if _level is not None and _module is not None else None


def installed_isas() -> tuple[str, ...]:
    """The levels whose module the install built (present in the package), lowest first."""
    return tuple(lv.name for lv in isa.LEVELS if _installed(lv))


def available_isas() -> tuple[str, ...]:
    """The levels this CPU runs, lowest first, up to ``HERON_ISA`` when it is set; empty off
    x86-64. ``load_isa`` gives each one's module."""
    if not isa.is_x86_64():
        return ()
    flags = isa.cpu_flags()
    top = isa.LEVELS.index(isa.choose(flags, isa.requested(), installed_isas()))
    return tuple(lv.name for lv in isa.supported(flags) if isa.LEVELS.index(lv) <= top)


def load_isa(name: str) -> Kernels:
    """The kernel module of level ``name``: the installed one, or one compiled now where the
    install has none. Raises IsaError for a level this CPU cannot run, and the build's error
    where the fallback compile fails."""
    chosen = isa.choose(isa.cpu_flags(), name)
    if name not in _loaded:
        _loaded[name] = _import_or_build(chosen)
    return _loaded[name]


def cpu_kernels() -> Kernels | None:
    """The kernel module for this CPU, loaded on the first call; None when unavailable (off
    x86-64, ``HERON_KERNELS=0``, or a fallback build that failed). Raises IsaError when
    ``HERON_ISA`` names an unknown level or one this CPU cannot run."""
    global _module, _level, _tried
    with _lock:
        if _tried:
            return _module
        if not env.kernels_enabled():
            _tried = True
            return None
        if not isa.is_x86_64():
            _tried = True
            logger.warning(
                "Heron's CPU kernels are built for x86-64 only; on %s Heron uses torch ops",
                platform.machine() or "this machine",
            )
            return None
        _level = isa.choose(isa.cpu_flags(), isa.requested(), installed_isas())
        _tried = True
        try:
            _module = load_isa(_level.name)
        except Exception as exc:  # a missing compiler or headers: keep the torch path
            logger.warning("Heron's CPU kernels could not be built (%s); using torch ops", exc)
            _module = None
            return None
        logger.info("Heron's CPU kernels: %s", _level.name)
        return _module


def require_cpu_kernels() -> Kernels:
    """Like ``cpu_kernels`` but raises RuntimeError when they are unavailable."""
    module = cpu_kernels()
    if module is None:
        raise RuntimeError(
            "this quantization needs Heron's CPU kernels, which are unavailable here (x86-64 "
            "only; HERON_KERNELS=0 turns them off); use quantization=None"
        )
    return module


def _installed(level: IsaLevel) -> bool:
    return importlib.util.find_spec(f"{__name__}.{level.module}") is not None


def _stale(level: IsaLevel) -> bool:
    """In a git checkout (an editable install), whether ``csrc`` changed after ``level``'s module
    was built: then its numbers are not the sources' any more."""
    spec = importlib.util.find_spec(f"{__name__}.{level.module}")
    if spec is None or spec.origin is None or not (_CSRC.parents[2] / ".git").exists():
        return False
    built = Path(spec.origin).stat().st_mtime
    return any((_CSRC / name).stat().st_mtime > built for name in (*isa.SOURCES, *isa.HEADERS))


def _import_or_build(level: IsaLevel) -> Kernels:
    if _installed(level) and _stale(level):
        logger.warning(
            "Heron's installed %s kernels are older than heron/kernels/csrc; compiling the "
            "sources as they are now. Rerun scripts/setup to rebuild the install",
            level.name,
        )
    elif _installed(level):
        try:
            return cast(Kernels, importlib.import_module(f"{__name__}.{level.module}"))
        except ImportError as exc:  # e.g. built against another torch than the one installed
            logger.warning(
                "Heron's installed %s kernels do not load (%s); compiling them instead",
                level.name,
                exc,
            )
    return _build(level)


def _build_key(level: IsaLevel) -> str:
    h = hashlib.sha256()
    for name in (*isa.SOURCES, *isa.HEADERS):
        h.update((_CSRC / name).read_bytes())
    # One build per torch install: two virtual environments never share (or fight over) one.
    for part in (torch.__version__, torch.__file__, sys.version, *level.cflags):
        h.update(part.encode())
    return h.hexdigest()[:16]


def _build(level: IsaLevel) -> Kernels:
    """The fallback: compile ``level`` with ``torch.utils.cpp_extension.load``, once per key."""
    from torch.utils import cpp_extension

    key = _build_key(level)
    build_dir = cache_dir() / f"{level.name}-{key}"
    build_dir.mkdir(parents=True, exist_ok=True)
    logger.warning(
        "Heron's %s CPU kernels were not built at install time; compiling them into %s "
        "(once; a minute or two). Reinstall Heron (scripts/setup, or pip install) to build "
        "them there instead",
        level.name,
        build_dir,
    )
    started = time.monotonic()
    # One build per key across processes: engine processes of several models may start at once.
    with open(build_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        # torch's own build lock is a file that a build killed midway (Ctrl-C, kill -9) leaves
        # behind, and every later load would wait on it forever. Holding the flock, nobody
        # else is building here, so such a file is stale.
        (build_dir / "lock").unlink(missing_ok=True)
        module = cpp_extension.load(
            name=f"heron_cpu_{level.name}_{key}",
            sources=[str(_CSRC / s) for s in isa.SOURCES],
            extra_cflags=[*isa.COMMON_CFLAGS, *level.cflags],
            extra_ldflags=list(isa.LDFLAGS),
            build_directory=str(build_dir),
            verbose=sys.stderr.isatty(),  # ninja's [n/7] steps, for a person watching
        )
    logger.warning(
        "Heron's %s CPU kernels are ready (%.0f s)", level.name, time.monotonic() - started
    )
    return cast(Kernels, module)


def attach_kernels(model: nn.Module, kernels: Kernels) -> None:
    """Give ``kernels`` to every module of ``model`` that has an op-by-op kernel path (a
    ``kernels`` attribute: norms, attention, MLPs). Linears get theirs when quantized."""
    for module in model.modules():
        if "kernels" in vars(module):
            setattr(module, "kernels", kernels)  # noqa: B010
