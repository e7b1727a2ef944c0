"""Builds Heron's CPU kernels at install time; everything else about the package is in
pyproject.toml.

The same ``heron/kernels/csrc`` sources become one extension module per ISA level
(``heron.kernels._cpu_scalar``, ``_cpu_avx2``, ``_cpu_avx512``), each compiled with its own
explicit flags from ``heron/kernels/isa.py``; at run time Heron imports the best one the CPU
runs. Off x86-64 nothing is built (Heron runs on torch ops there). A level that fails to
compile is left out with a warning rather than failing the install; where none is built,
Heron compiles its level on first use instead (``heron.kernels``).
"""

from __future__ import annotations

import importlib.util
import os
import sys
import time
from pathlib import Path
from typing import Any

from setuptools import setup

ROOT = Path(__file__).resolve().parent
CSRC = "heron/kernels/csrc"


def _isa() -> Any:
    """``heron/kernels/isa.py``, loaded by path: importing ``heron`` needs its dependencies."""
    spec = importlib.util.spec_from_file_location("_heron_isa", ROOT / "heron/kernels/isa.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def _say(message: str) -> None:
    print(f"heron: {message}", file=sys.stderr, flush=True)


def _kernels() -> dict[str, Any]:
    isa = _isa()
    if not isa.is_x86_64():
        _say("no CPU kernels for this machine (x86-64 only); Heron will use torch ops")
        return {}
    if os.environ.get("HERON_KERNELS") == "0":
        _say("HERON_KERNELS=0: not building the CPU kernels")
        return {}
    from torch.utils.cpp_extension import BuildExtension, CppExtension

    class BuildKernels(BuildExtension):  # type: ignore[misc]
        """Builds each level on its own, saying how far it got; a failed level is left out."""

        def finalize_options(self) -> None:
            super().finalize_options()
            # A fixed place for the objects (setuptools' editable builds use a fresh temporary
            # one), so that reinstalling with the same torch recompiles only what changed.
            tag = f"py{sys.version_info.major}{sys.version_info.minor}"
            self._objects = os.path.join("build", f"heron-kernels-{tag}")

        def build_extensions(self) -> None:
            self._done: list[Any] = []
            self._count = len(self.extensions)
            try:
                super().build_extensions()
            except Exception as exc:  # e.g. no compiler at all: the checks before any build
                _say(f"WARNING: the CPU kernels were not built ({exc})")
            self.extensions = self._done  # what later steps copy and install

        def build_extension(self, ext: Any) -> None:
            level = ext.name.rsplit("_", 1)[-1]
            step = f"({len(self._done) + 1}/{self._count})"
            _say(f"compiling the {level} CPU kernels {step}; a minute or two on two cores")
            started = time.monotonic()
            # One folder per level: the levels compile the same sources with other flags.
            self.build_temp = os.path.join(self._objects, level)
            try:
                super().build_extension(ext)
            except Exception as exc:
                _say(
                    f"WARNING: the {level} CPU kernels failed to build and are left out: {exc}. "
                    "Heron uses the best level that did build."
                )
                return
            self._done.append(ext)
            _say(f"built the {level} CPU kernels in {time.monotonic() - started:.0f} s")

    modules = [
        CppExtension(
            f"heron.kernels.{level.module}",
            sources=[f"{CSRC}/{name}" for name in isa.SOURCES],
            depends=[f"{CSRC}/{name}" for name in isa.HEADERS],
            extra_compile_args=[*isa.COMMON_CFLAGS, *level.cflags],
            extra_link_args=list(isa.LDFLAGS),
        )
        for level in isa.LEVELS
    ]
    return {"ext_modules": modules, "cmdclass": {"build_ext": BuildKernels}}


setup(**_kernels())
