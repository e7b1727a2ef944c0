"""The cmake flags that pick ggml's instruction sets for the llama.cpp peer build: explicit
per-ISA options from the CPU's flags, never ``-march=native``, never AMX."""

from __future__ import annotations

from collections.abc import Iterable

# ggml's x86 options and the CPU flags (as /proc/cpuinfo names them) each needs.
GGML_X86_OPTIONS: tuple[tuple[str, frozenset[str]], ...] = (
    ("GGML_SSE42", frozenset({"sse4_2"})),
    ("GGML_AVX", frozenset({"avx"})),
    ("GGML_AVX2", frozenset({"avx2"})),
    ("GGML_BMI2", frozenset({"bmi2"})),
    ("GGML_FMA", frozenset({"fma"})),
    ("GGML_F16C", frozenset({"f16c"})),
    ("GGML_AVX_VNNI", frozenset({"avx_vnni"})),
    ("GGML_AVX512", frozenset({"avx512f", "avx512cd", "avx512vl", "avx512dq", "avx512bw"})),
    ("GGML_AVX512_VBMI", frozenset({"avx512vbmi"})),
    ("GGML_AVX512_VNNI", frozenset({"avx512_vnni"})),
    ("GGML_AVX512_BF16", frozenset({"avx512_bf16"})),
)
GGML_NO_AMX = ("-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF")


def ggml_isa_args(flags: Iterable[str] | None = None, machine: str | None = None) -> list[str]:
    """The cmake flags that choose ggml's instruction sets. On x86-64: GGML_NATIVE off and each
    option on exactly where the CPU (``flags``, default this one's) reports what it needs, AMX
    always off. ``-march=native`` would build ggml's AMX paths on any CPU that advertises AMX,
    and hosts that advertise it but refuse its tiles (some VMs) then kill the peer with SIGILL.
    Elsewhere GGML_NATIVE stays on (no AMX there)."""
    from heron.kernels import isa  # imports torch: only when a peer is built

    if not isa.is_x86_64(machine):
        return ["-DGGML_NATIVE=ON"]
    have = frozenset(isa.cpu_flags() or ()) if flags is None else frozenset(flags)
    options = [f"-D{name}={'ON' if needs <= have else 'OFF'}" for name, needs in GGML_X86_OPTIONS]
    return ["-DGGML_NATIVE=OFF", *options, *GGML_NO_AMX]
