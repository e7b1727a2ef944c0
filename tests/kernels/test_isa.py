"""ISA levels: which one a CPU gets, ``HERON_ISA``, the same numbers on every level where the
arithmetic is the same, and kernels that load from the install with no compiler at hand."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

import heron.kernels
from heron.bench.ggml_flags import ggml_isa_args
from heron.kernels import (
    available_isas,
    cpu_kernels,
    installed_isas,
    isa,
    kernels_isa,
    load_isa,
)
from heron.kernels.isa import IsaError

ZEN3 = frozenset("sse4_2 avx avx2 fma f16c bmi2".split())
SKYLAKE_X = ZEN3 | {"avx512f", "avx512bw", "avx512vl", "avx512dq", "avx512cd"}  # no VNNI
SAPPHIRE_RAPIDS = SKYLAKE_X | {"avx512_vnni", "avx512_bf16", "amx_tile", "amx_int8", "amx_bf16"}
ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("flags", "best"),
    [
        (None, "scalar"),  # flags unknown (no /proc/cpuinfo)
        (frozenset({"sse4_2", "avx"}), "scalar"),
        (ZEN3 - {"f16c"}, "scalar"),
        (ZEN3, "avx2"),
        (SKYLAKE_X, "avx2"),  # the AVX-512 level needs VNNI
        (SAPPHIRE_RAPIDS, "avx512"),
    ],
)
def test_the_best_level_the_cpu_runs(flags: frozenset[str] | None, best: str) -> None:
    assert isa.choose(flags).name == best


def test_heron_isa_forces_a_lower_level_and_refuses_a_higher_one() -> None:
    assert isa.choose(SAPPHIRE_RAPIDS, "avx2").name == "avx2"
    assert isa.choose(ZEN3, "scalar").name == "scalar"
    with pytest.raises(IsaError, match="avx512_vnni"):
        isa.choose(ZEN3, "avx512")
    with pytest.raises(IsaError, match="not a level"):
        isa.choose(ZEN3, "sse9")


def test_only_built_levels_are_chosen_unless_none_is() -> None:
    assert isa.choose(SAPPHIRE_RAPIDS, built=["scalar", "avx2"]).name == "avx2"
    assert isa.choose(SAPPHIRE_RAPIDS, built=[]).name == "avx512"  # the fallback builds it


def test_flags_come_from_cpuinfo(tmp_path: Path) -> None:
    info = tmp_path / "cpuinfo"
    info.write_text("processor\t: 0\nflags\t\t: fpu avx avx2 fma\n\nprocessor\t: 1\n")
    assert isa.cpu_flags(info) == frozenset({"fpu", "avx", "avx2", "fma"})
    assert isa.cpu_flags(tmp_path / "missing") is None


def test_no_level_is_native_or_uses_amx() -> None:
    for level in isa.LEVELS:
        flags = " ".join((*isa.COMMON_CFLAGS, *level.cflags))
        assert "native" not in flags and "amx" not in flags, level
        assert "-march=x86-64" in flags  # not whatever the compiler defaults to


def test_the_llama_cpp_peer_build_never_uses_amx() -> None:
    spr = ggml_isa_args(SAPPHIRE_RAPIDS, machine="x86_64")
    assert "-DGGML_NATIVE=OFF" in spr and "-DGGML_AVX512_VNNI=ON" in spr
    assert {"-DGGML_AMX_TILE=OFF", "-DGGML_AMX_INT8=OFF", "-DGGML_AMX_BF16=OFF"} <= set(spr)
    zen3 = ggml_isa_args(ZEN3, machine="x86_64")
    assert "-DGGML_AVX2=ON" in zen3 and "-DGGML_AVX512=OFF" in zen3
    assert ggml_isa_args(machine="aarch64") == ["-DGGML_NATIVE=ON"]


@pytest.fixture
def fresh_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    """``cpu_kernels()`` chooses again, and the process's own choice comes back afterwards."""
    for name, value in (("_tried", False), ("_module", None), ("_level", None)):
        monkeypatch.setattr(heron.kernels, name, value)


@pytest.mark.usefixtures("fresh_choice")
def test_off_x86_the_torch_path_with_one_notice(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(isa.platform, "machine", lambda: "aarch64")
    monkeypatch.setattr(heron.kernels.platform, "machine", lambda: "aarch64")
    with caplog.at_level(logging.INFO, logger="heron.kernels"):
        assert cpu_kernels() is None
        assert cpu_kernels() is None
    assert [r.getMessage() for r in caplog.records] == [
        "Heron's CPU kernels are built for x86-64 only; on aarch64 Heron uses torch ops"
    ]
    assert kernels_isa() is None and available_isas() == ()


@pytest.mark.usefixtures("fresh_choice")
def test_heron_isa_picks_the_module(monkeypatch: pytest.MonkeyPatch) -> None:
    if not isa.is_x86_64():
        pytest.skip("x86-64 only")
    monkeypatch.setenv("HERON_ISA", "scalar")
    assert cpu_kernels() is load_isa("scalar")
    assert kernels_isa() == "scalar"
    assert available_isas() == ("scalar",)


@pytest.mark.usefixtures("fresh_choice")
def test_heron_isa_above_the_cpu_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    runs = {lv.name for lv in isa.supported(isa.cpu_flags())}
    above = [lv.name for lv in isa.LEVELS if lv.name not in runs]
    if not isa.is_x86_64() or not above:
        pytest.skip("this CPU runs every level")
    monkeypatch.setenv("HERON_ISA", above[0])
    with pytest.raises(IsaError, match=f"HERON_ISA={above[0]} needs CPU flags"):
        cpu_kernels()


def test_kernels_load_from_the_install_with_no_compiler(tmp_path: Path) -> None:
    """With an empty cache and every compiler on PATH replaced by /bin/false, the kernels
    still load: they come from the installed build, one module per level the CPU runs."""
    if not isa.is_x86_64():
        pytest.skip("x86-64 only: elsewhere nothing is built")
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for tool in ("c++", "g++", "gcc", "cc", "clang++", "ninja"):
        (fake_bin / tool).symlink_to("/bin/false")
    cache = tmp_path / "cache"
    env = {
        **os.environ,
        "PATH": f"{fake_bin}{os.pathsep}{os.environ.get('PATH', '')}",
        "CXX": "/bin/false",
        "CC": "/bin/false",
        "HERON_CACHE": str(cache),
    }
    env.pop("HERON_ISA", None)
    code = (
        "from heron.kernels import cpu_kernels, installed_isas, kernels_isa\n"
        "m = cpu_kernels()\n"
        "print(kernels_isa(), m.__name__ if m else None, ' '.join(installed_isas()))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    chosen, module, installed = out.stdout.split(maxsplit=2)
    best = isa.choose(isa.cpu_flags()).name
    assert (chosen, module) == (best, f"heron.kernels._cpu_{best}"), out.stderr
    # The install built every level this CPU runs (and, on x86-64 CI, the others too).
    assert {lv.name for lv in isa.supported(isa.cpu_flags())} <= set(installed.split())
    assert not cache.exists() or not any(cache.rglob("*.so"))


# Same numbers on every level. Which comparisons are exact, and why:
# - the activation quantizer: max, one rounded product and nearest-even rounding per element,
#   in any order the same; weights into blocks, the same; rope and cache writes are the same
#   elementwise code on every level (-ffp-contract=off: no fused multiply-adds appear);
# - the linears: the int8 block dot products are exact integer sums on every level (maddubs or
#   vpdpbusd), and AVX2 and AVX-512 then add the blocks' floats in the same order, so those two
#   agree bit for bit. The scalar loop adds them one block at a time instead of four, so it
#   agrees to float32 rounding only (checked against a float64 sum of the same integer dots);
# - RMSNorm's sum of squares (8 lanes or one), silu's exp (a polynomial or libm) and attention's
#   softmax and weighted sums differ in order or method: float tolerances.
LEVELS = available_isas()


@pytest.fixture(scope="module")
def levels() -> dict[str, ModuleType]:
    if len(LEVELS) < 2:
        pytest.skip("this CPU runs one level only")
    return {name: load_isa(name) for name in LEVELS}  # type: ignore[misc]


def _same(outs: dict[str, object]) -> None:
    items = list(outs.items())
    for name, value in items[1:]:
        a = value if isinstance(value, list | tuple) else [value]
        b = items[0][1] if isinstance(items[0][1], list | tuple) else [items[0][1]]
        for x, y in zip(a, b, strict=True):
            assert torch.equal(x, y), f"{name} differs from {items[0][0]}"


def test_quantizers_agree_bit_for_bit(levels: dict[str, ModuleType]) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(9, 320, generator=g) * 3
    x[0, :32] = 0  # an all-zero block
    w = torch.randn(24, 320, generator=g) * 0.05
    _same({n: k.quantize_rows(x) for n, k in levels.items()})
    _same({n: k.quantize_q4_1(w) for n, k in levels.items()})
    _same({n: k.quantize_q8_0(w) for n, k in levels.items()})


def test_rope_and_cache_writes_agree_bit_for_bit(levels: dict[str, ModuleType]) -> None:
    g = torch.Generator().manual_seed(1)
    q, cos, sin = torch.randn(5, 3, 64, generator=g), torch.randn(5, 32), torch.randn(5, 32)
    outs = {}
    for name, k in levels.items():
        out = q.clone()
        k.rope_(out, cos, sin)
        outs[name] = out
    _same(outs)
    kv = torch.randn(2, 5, 2, 16, generator=g)
    slots = torch.tensor([3, 0, 7, 12, 5])
    for dtype in (torch.float32, torch.float16):
        caches = {}
        for name, k in levels.items():
            kc, vc = torch.zeros(4, 4, 2, 16, dtype=dtype), torch.zeros(4, 4, 2, 16, dtype=dtype)
            k.cache_write_(kv[0], kv[1], kc, vc, slots)
            caches[name] = [kc, vc]
        _same(caches)


def _q4_1_reference(
    x: torch.Tensor, qs: torch.Tensor, d: torch.Tensor, m: torch.Tensor, kernels: ModuleType
) -> torch.Tensor:
    """The q4_1 linear in float64 from the same integer block dot products."""
    xq, xd, xs, _ = kernels.quantize_rows(x)
    n, nb = d.shape
    q = torch.cat([qs.view(n, nb, 16) & 15, qs.view(n, nb, 16) >> 4], dim=-1).double()
    isum = torch.einsum("rbk,nbk->rnb", xq.view(len(x), nb, 32).double(), q)
    scale = d.double()[None] * xd.double()[:, None]  # [rows, n, nb]
    return (scale * isum + m.double()[None] * xs.double()[:, None]).sum(-1)


@pytest.mark.parametrize("rows", [1, 5, 13])
def test_linears_agree_across_levels(levels: dict[str, ModuleType], rows: int) -> None:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(rows, 576, generator=g)
    w = torch.randn(40, 576, generator=g) * 0.05
    q4, q8 = levels["scalar"].quantize_q4_1(w), levels["scalar"].quantize_q8_0(w)
    out4 = {n: k.linear_q4_1(x, *q4, None) for n, k in levels.items()}
    out8 = {n: k.linear_q8_0(x, *q8, None) for n, k in levels.items()}
    ref = _q4_1_reference(x, *q4, levels["scalar"])
    for name, out in out4.items():  # float32 sums of the exact integer dots
        assert (out.double() - ref).abs().max() <= 1e-5 * ref.abs().max(), name
    for outs in (out4, out8):
        for name, out in outs.items():
            assert torch.allclose(out, outs["scalar"], rtol=1e-5, atol=1e-5), name
        _same({n: o for n, o in outs.items() if n != "scalar"})  # same order of float adds


def test_float_reductions_agree_to_a_tolerance(levels: dict[str, ModuleType]) -> None:
    g = torch.Generator().manual_seed(3)
    x, wn = torch.randn(6, 576, generator=g), torch.rand(576, generator=g) + 0.5
    gate_up = torch.randn(6, 2 * 96, generator=g) * 4
    q = torch.randn(3, 9, 64, generator=g)
    k_cache, v_cache = torch.randn(8, 16, 3, 64, generator=g), torch.randn(8, 16, 3, 64)
    table = torch.tensor([[0, 1, 2, 3], [4, 5, 6, 7], [2, 6, 1, 0]])
    lens = torch.tensor([64, 17, 40])
    base = levels["scalar"]
    for name, k in levels.items():
        assert torch.allclose(k.rms_norm(x, wn, 1e-6), base.rms_norm(x, wn, 1e-6), atol=1e-5)
        assert torch.allclose(k.silu_mul(gate_up), base.silu_mul(gate_up), atol=1e-5), name
        for window, softcap in ((0, 0.0), (5, 30.0)):
            args = (q, k_cache, v_cache, table, lens, 0.125, window, softcap)
            a, b = k.paged_decode_attention(*args), base.paged_decode_attention(*args)
            assert torch.allclose(a, b, atol=1e-5), (name, window)


def test_an_editable_install_older_than_its_sources_is_stale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a checkout, sources edited after the install are compiled as they are (with a
    warning to rerun scripts/setup) rather than served by the older installed module."""
    built = [lv for lv in isa.LEVELS if lv.name in installed_isas()]
    if not built:
        pytest.skip("no installed kernels")
    csrc = tmp_path / "repo" / "heron" / "kernels" / "csrc"
    csrc.mkdir(parents=True)
    for name in (*isa.SOURCES, *isa.HEADERS):
        (csrc / name).write_text("// edited after the install\n")
    monkeypatch.setattr(heron.kernels, "_CSRC", csrc)
    assert not heron.kernels._stale(built[0])  # not a git checkout: an installed package
    (tmp_path / "repo" / ".git").mkdir()
    assert heron.kernels._stale(built[0])


def test_a_build_killed_midway_does_not_wedge_later_builds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """torch's build lock file, left by a build that was killed, is cleared under Heron's own
    lock instead of making every later load wait on it forever."""
    from torch.utils import cpp_extension

    monkeypatch.setenv("HERON_CACHE", str(tmp_path))
    level = isa.LEVELS[0]
    build_dir = heron.kernels.cache_dir() / f"{level.name}-{heron.kernels._build_key(level)}"
    build_dir.mkdir(parents=True)
    (build_dir / "lock").write_text("")  # what a killed build leaves
    seen: list[bool] = []

    def load(**kwargs: object) -> str:
        seen.append((Path(str(kwargs["build_directory"])) / "lock").exists())
        return "module"

    monkeypatch.setattr(cpp_extension, "load", load)
    assert heron.kernels._build(level) == "module"
    assert seen == [False]
