"""Qwen3 (q/k RMSNorm per head before rope, head_dim from the config) on tiny random weights,
from its HF directory and from a GGUF file in llama.cpp's ``qwen3`` layout, against
transformers through the paged cache (``parity.py``: tolerance 1e-4, fp32)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from heron.loader import load_checkpoint
from tests.models.parity import check_parity
from tests.models.tiny import build, write_gguf

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def qwen3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("qwen3", tmp_path_factory.mktemp("qwen3") / "hf")


def test_hf_logits_match_transformers(qwen3_dir: Path) -> None:
    check_parity(qwen3_dir, qwen3_dir, "qwen3")


def test_gguf_round_trip(qwen3_dir: Path, tmp_path: Path) -> None:
    path = write_gguf(qwen3_dir, tmp_path / "qwen3.gguf")
    gguf, hf = load_checkpoint(path), load_checkpoint(qwen3_dir)
    try:
        c = gguf.config
        assert c.architecture == "Qwen3ForCausalLM" and c.head_dim == 32
        assert c.tie_word_embeddings and not c.attention_bias and c.sliding_window is None
        assert c.rope_theta == hf.config.rope_theta and c.rope_scaling is None
        ours, want = dict(gguf.weights()), dict(hf.weights())
        assert sorted(ours) == sorted(want)  # q_norm/k_norm included, lm_head tied
        for name, tensor in want.items():  # rows unpermuted: qwen3 uses HF's rope layout
            assert torch.equal(ours[name], tensor), name
    finally:
        gguf.close()
    check_parity(path, qwen3_dir, "qwen3 gguf")
