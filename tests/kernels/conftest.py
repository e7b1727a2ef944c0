from __future__ import annotations

from types import ModuleType

import pytest

from heron.kernels import cpu_kernels


@pytest.fixture(scope="session")
def kernels() -> ModuleType:
    module = cpu_kernels()
    if module is None:
        pytest.skip("Heron's CPU kernels could not be built here (no C++ compiler)")
    return module
