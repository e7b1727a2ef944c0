"""Shared fixtures for store tests: a fresh store and tiny GGUF files."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import gguf
import numpy as np
import pytest

from heron.store import ModelStore


def write_tiny_gguf(path: Path, arch: str = "llama", seed: int = 0) -> Path:
    """A small valid GGUF (two F32 tensors, a few keys) that Heron's parser accepts."""
    rng = np.random.default_rng(seed)
    writer = gguf.GGUFWriter(path, arch)
    writer.add_uint32("general.file_type", 0)
    writer.add_uint32(f"{arch}.context_length", 64)
    writer.add_string("tokenizer.ggml.model", "gpt2")
    writer.add_tensor("token_embd.weight", rng.standard_normal((8, 4), dtype=np.float32))
    writer.add_tensor("output_norm.weight", np.ones(4, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def store(tmp_path: Path) -> ModelStore:
    return ModelStore(tmp_path / "models")


@pytest.fixture
def tiny_gguf(tmp_path: Path) -> Callable[..., Path]:
    """``tiny_gguf(name="model.gguf", seed=0)`` writes a tiny GGUF under ``tmp_path/src``."""

    def make(name: str = "model.gguf", seed: int = 0) -> Path:
        src = tmp_path / "src"
        src.mkdir(exist_ok=True)
        return write_tiny_gguf(src / name, seed=seed)

    return make
