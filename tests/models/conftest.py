"""Real weights from the model store, pulled once per test session into a temporary store.

``pulled_model("gemma3:270m")`` returns the local path (a GGUF blob or an HF directory) of a
catalog model; the first call downloads and verifies it, later calls reuse it.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from heron.store.pull import pull
from heron.store.store import ModelStore


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> ModelStore:
    return ModelStore(tmp_path_factory.mktemp("heron-models"))


@pytest.fixture(scope="session")
def pulled_model(model_store: ModelStore) -> Callable[[str], str]:
    paths: dict[str, str] = {}

    def get(name: str) -> str:
        if name not in paths:
            stored = pull(model_store, name, lambda _progress: None)
            paths[name] = str(model_store.model_path(stored))
        return paths[name]

    return get
