from __future__ import annotations

import pytest

from heron.packaged import find_packaged_model

# Fixtures that load SmolLM2's real weights, in this process or in a `heron serve` they start.
# A test that uses one (directly or through another fixture) is slow, whatever its module;
# modules whose own fixtures or tests load weights or the transformers reference say so with
# `pytestmark = pytest.mark.slow`.
LOADS_WEIGHTS = frozenset(
    {
        "server",  # tests/server/conftest.py
        "offline_llm",  # tests/server/conftest.py, tests/cli/conftest.py
        "cli_server",  # tests/cli/conftest.py (and `heron`, `pirate` on top of it)
        "pulled_model",  # tests/models/conftest.py
        "embed_server",  # tests/server/test_embeddings.py
    }
)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if LOADS_WEIGHTS.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    # Fails (does not skip) when the model package is missing: CI installs it.
    return find_packaged_model("smollm2")
