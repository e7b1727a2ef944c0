"""Heron's native CPU kernels, compiled on first use with ``torch.utils.cpp_extension``.

Nothing is built at import: ``cpu_kernels()`` compiles ``csrc/*.cpp`` the first time a model
asks for them (about a minute on two cores) into a cache keyed by the sources, the torch
version and the CPU's instruction set, and returns the loaded module, or None where no
compiler is available or the build fails (callers then keep the plain torch path).
``HERON_KERNELS=0`` turns them off.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import platform
import sys
import threading
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from torch import nn

from heron import env

logger = logging.getLogger(__name__)

_SOURCES = ("quantize.cpp", "quant.cpp", "packed.cpp", "attention.cpp", "ops.cpp", "layer.cpp")
_HEADERS = ("heron_cpu.h", "vec.h")
# KV cache dtypes the attention kernels read and write (float16 is rounded when written).
CACHE_DTYPES = (torch.float32, torch.float16)
_lock = threading.Lock()
_module: Kernels | None = None
_tried = False


class Kernels(Protocol):
    """The compiled module as Python sees it (bindings in ``csrc/ops.cpp``). Tensors are
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

    # The fused decode layer (``heron.kernels.fused``): classes, so typed loosely here.
    LinearWeights: Any
    LayerWeights: Any
    DecodeStack: Any
    decode_layer_: Any


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor()


def cache_dir() -> Path:
    """Where built kernels live: ``$HERON_CACHE/kernels`` (``heron.env``)."""
    return env.cache_dir() / "kernels"


def _build_key(csrc: Path) -> str:
    h = hashlib.sha256()
    for name in (*_SOURCES, *_HEADERS):
        h.update((csrc / name).read_bytes())
    h.update(torch.__version__.encode())
    h.update(sys.version.encode())
    h.update(_cpu_flags().encode())
    return h.hexdigest()[:16]


def _build() -> Kernels:
    from torch.utils import cpp_extension

    csrc = Path(__file__).parent / "csrc"
    key = _build_key(csrc)
    build_dir = cache_dir() / key
    build_dir.mkdir(parents=True, exist_ok=True)
    # One build per key across processes: engine processes of several models may start at once.
    with open(build_dir / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        module = cpp_extension.load(
            name=f"heron_cpu_{key}",
            sources=[str(csrc / s) for s in _SOURCES],
            extra_cflags=["-O3", "-march=native", "-ffp-contract=off", "-fopenmp", "-DNDEBUG"],
            extra_ldflags=["-fopenmp"],
            build_directory=str(build_dir),
            verbose=False,
        )
    return cast(Kernels, module)


def cpu_kernels() -> Kernels | None:
    """The compiled kernel module, building it on the first call; None when unavailable."""
    global _module, _tried
    with _lock:
        if _tried:
            return _module
        _tried = True
        if not env.kernels_enabled():
            return None
        try:
            _module = _build()
        except Exception as exc:  # a missing compiler or headers: keep the torch path
            logger.warning("Heron's CPU kernels could not be built (%s); using torch ops", exc)
            _module = None
        return _module


def require_cpu_kernels() -> Kernels:
    """Like ``cpu_kernels`` but raises RuntimeError when they are unavailable."""
    module = cpu_kernels()
    if module is None:
        raise RuntimeError(
            "this quantization needs Heron's CPU kernels, which could not be built "
            "(a C++ compiler is required); use quantization=None"
        )
    return module


def attach_kernels(model: nn.Module, kernels: Kernels) -> None:
    """Give ``kernels`` to every module of ``model`` that has an op-by-op kernel path (a
    ``kernels`` attribute: norms, attention, MLPs). Linears get theirs when quantized."""
    for module in model.modules():
        if "kernels" in vars(module):
            setattr(module, "kernels", kernels)  # noqa: B010
