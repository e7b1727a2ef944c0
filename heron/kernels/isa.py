"""Which instruction-set level of Heron's CPU kernels a machine runs, and how each is built.

The kernels are compiled at install time (``setup.py``) once per level, each level its own
extension module from the same ``csrc/`` sources with explicit ``-m`` flags: never
``-march=native`` (a build must run on any CPU of its level, not just the build host's) and
never AMX (some hosts advertise its tiles and then refuse them)::

    level    module                       the CPU flags it needs (``/proc/cpuinfo``)
    scalar   heron.kernels._cpu_scalar    none: any x86-64
    avx2     heron.kernels._cpu_avx2      avx2 fma f16c
    avx512   heron.kernels._cpu_avx512    those, avx512f avx512bw avx512vl avx512dq avx512_vnni

At run time the best level the CPU supports is chosen; ``HERON_ISA`` forces a lower one. Linux
lists an AVX-512 flag only where the OS saves the AVX-512 registers, so the flags are also the
OS check. Off x86-64 nothing is built and Heron runs on torch ops.

This module imports nothing but the standard library: ``setup.py`` loads it by path.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

ENV_VAR = "HERON_ISA"
SOURCES = (
    *("quantize.cpp", "quant.cpp", "packed.cpp", "attention.cpp", "ops.cpp", "layer.cpp"),
    *("lora.cpp", "bindings.cpp"),
)
HEADERS = ("heron_cpu.h", "vec.h")
# Every level: -ffp-contract=off keeps a * b + c two roundings unless the code asks for an fma,
# so the scalar code computes what it says; -g0 keeps the modules small.
COMMON_CFLAGS = ("-O3", "-g0", "-ffp-contract=off", "-fopenmp", "-DNDEBUG", "-fvisibility=hidden")
LDFLAGS = ("-fopenmp",)
_BASE = ("-march=x86-64", "-mtune=generic")  # a compiler may default to a higher x86-64 level
_AVX2 = ("-mavx", "-mavx2", "-mfma", "-mf16c")


class IsaError(ValueError):
    """``HERON_ISA`` names no level, or one this CPU cannot run."""


@dataclass(frozen=True, slots=True)
class IsaLevel:
    name: str
    cpu_flags: frozenset[str]  # as /proc/cpuinfo names them
    cflags: tuple[str, ...]

    @property
    def module(self) -> str:
        """The extension module's name inside ``heron.kernels``."""
        return f"_cpu_{self.name}"


# Lowest first. Each level's flags include the ones below it.
LEVELS = (
    IsaLevel("scalar", frozenset(), _BASE),
    IsaLevel("avx2", frozenset({"avx", "avx2", "fma", "f16c"}), (*_BASE, *_AVX2)),
    IsaLevel(
        "avx512",
        frozenset(
            {"avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512dq"}
            | {"avx512_vnni"}
        ),
        (
            *_BASE,
            *_AVX2,
            *("-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mavx512vnni"),
            # The kernels work in 256-bit vectors (with AVX-512's 32 registers and vpdpbusd);
            # keep the compiler's own loops there too.
            "-mprefer-vector-width=256",
        ),
    ),
)
NAMES = tuple(level.name for level in LEVELS)


def level(name: str) -> IsaLevel:
    """The level called ``name``; IsaError for an unknown one."""
    for candidate in LEVELS:
        if candidate.name == name:
            return candidate
    raise IsaError(f"{ENV_VAR}={name!r} is not a level; choose one of {', '.join(NAMES)}")


def is_x86_64(machine: str | None = None) -> bool:
    """Whether ``machine`` (default: this one) is x86-64, the only kind the kernels build for."""
    return (machine if machine is not None else platform.machine()).lower() in ("x86_64", "amd64")


def cpu_flags(cpuinfo: Path = Path("/proc/cpuinfo")) -> frozenset[str] | None:
    """The first CPU's feature flags as the OS reports them; None where they cannot be read
    (not Linux), which leaves the scalar level only."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return None
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "flags":
            return frozenset(value.split())
    return None


def supported(flags: Iterable[str] | None) -> tuple[IsaLevel, ...]:
    """The levels a CPU with ``flags`` runs, lowest first (scalar always)."""
    have = frozenset(flags or ())
    return tuple(lv for lv in LEVELS if lv.cpu_flags <= have)


def choose(
    flags: Iterable[str] | None,
    requested: str | None = None,
    built: Iterable[str] | None = None,
) -> IsaLevel:
    """The level to run: ``requested`` (``HERON_ISA``) when given, else the best level the CPU
    supports among ``built`` (the installed modules; all levels when None or none is built).
    Raises IsaError when ``requested`` is unknown or above what the CPU supports."""
    levels = supported(flags)
    if requested:
        wanted = level(requested)
        if wanted not in levels:
            raise IsaError(
                f"{ENV_VAR}={requested} needs CPU flags this machine lacks "
                f"({' '.join(sorted(wanted.cpu_flags - frozenset(flags or ())))}); "
                f"it supports {', '.join(lv.name for lv in levels)}"
            )
        return wanted
    names = set(built or ())
    candidates = [lv for lv in levels if lv.name in names] or list(levels)
    return candidates[-1]


def requested() -> str | None:
    """``HERON_ISA``: ``scalar``, ``avx2`` or ``avx512`` forces that level of the kernels (for
    tests, or to rule a path out); unset picks the best the CPU supports."""
    value = os.environ.get(ENV_VAR, "").strip().lower()
    return value or None
