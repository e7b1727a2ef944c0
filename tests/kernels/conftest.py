"""The kernel tests run once per ISA level this CPU supports (``heron.kernels.isa``): the
``kernels`` fixture is parametrized over the levels, so every test that takes it runs on the
scalar, AVX2 and (where the CPU has AVX-512 VNNI) AVX-512 modules in turn."""

from __future__ import annotations

from types import ModuleType

import pytest

from heron.kernels import available_isas, load_isa

ISAS = available_isas()


@pytest.fixture(scope="session", params=ISAS or ["none"])
def kernels(request: pytest.FixtureRequest) -> ModuleType:
    if request.param == "none":
        pytest.skip("Heron's CPU kernels are x86-64 only")
    try:
        module = load_isa(request.param)
    except Exception as exc:  # not installed, and no compiler for the fallback build
        pytest.skip(f"Heron's {request.param} CPU kernels are unavailable here ({exc})")
    return module  # type: ignore[return-value]
