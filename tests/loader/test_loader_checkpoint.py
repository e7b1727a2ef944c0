"""load_checkpoint dispatch between GGUF files and HF directories."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import transformers as transformers

from heron.loader import Checkpoint, CheckpointError, GGUFError, load_checkpoint


def test_gguf_file(smollm2_path: str) -> None:
    ckpt = load_checkpoint(smollm2_path)
    try:
        assert isinstance(ckpt, Checkpoint) and ckpt.format == "gguf"
        assert ckpt.gguf is not None and ckpt.path == Path(smollm2_path)
        assert ckpt.config.architecture == "LlamaForCausalLM"
        first = next(ckpt.weights())
        again = next(ckpt.weights())  # each call starts a fresh pass
        assert first[0] == again[0] == "model.embed_tokens.weight"
        assert first[1].shape == (49152, 576) and torch.equal(first[1], again[1])
    finally:
        ckpt.close()


def test_hf_directory(tmp_path: Path) -> None:
    config = transformers.LlamaConfig(
        vocab_size=32,
        hidden_size=16,
        intermediate_size=24,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=64,
    )
    transformers.LlamaForCausalLM(config).save_pretrained(tmp_path)
    ckpt = load_checkpoint(tmp_path)
    assert ckpt.format == "hf" and ckpt.gguf is None
    assert ckpt.config.vocab_size == 32
    names = [name for name, _ in ckpt.weights()]
    assert "model.embed_tokens.weight" in names and names == [n for n, _ in ckpt.weights()]
    ckpt.close()


def test_rejects_other_paths(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such file or directory"):
        load_checkpoint(tmp_path / "missing.gguf")
    other = tmp_path / "weights.bin"
    other.write_bytes(b"x")
    with pytest.raises(CheckpointError, match=r"expected a \.gguf file"):
        load_checkpoint(other)
    bad = tmp_path / "bad.GGUF"
    bad.write_bytes(b"GGUF")
    with pytest.raises(GGUFError, match="truncated"):
        load_checkpoint(bad)
