from __future__ import annotations

from pathlib import Path

import pytest

from tests.lora.adapters import make_peft
from tests.models.tiny import build


@pytest.fixture(scope="module")
def llama_set(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny Llama and three random adapters on it: rank 8 on q/v, rank 16 on everything,
    rank 16 rsLoRA on the MLP."""
    root = tmp_path_factory.mktemp("lora")
    base = build("llama3", root / "base")
    return {
        "base": base,
        "qv8": make_peft(base, root / "qv8", 8, targets=["q_proj", "v_proj"], seed=1),
        "all16": make_peft(base, root / "all16", 16, seed=2),
        "mlp16": make_peft(
            base,
            root / "mlp16",
            16,
            targets=["gate_proj", "up_proj", "down_proj"],
            rslora=True,
            seed=3,
        ),
    }
