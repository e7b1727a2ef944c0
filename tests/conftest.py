from __future__ import annotations

import pytest

from heron.packaged import find_packaged_model


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    # Fails (does not skip) when the model package is missing: CI installs it.
    return find_packaged_model("smollm2")
