"""HF checkpoint directories: config.json parsing and safetensors weights."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
import transformers as transformers

from heron.loader.hf_dir import CheckpointError, iter_safetensors_weights, load_hf_checkpoint

pytestmark = pytest.mark.slow


def save_tiny(path: Path, dtype: torch.dtype = torch.float32, **overrides: Any) -> dict:
    kwargs: dict[str, Any] = {
        "vocab_size": 64,
        "hidden_size": 32,
        "intermediate_size": 48,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 128,
        "rope_theta": 50000.0,
        "eos_token_id": [2, 5],
    }
    kwargs.update(overrides)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**kwargs)).to(dtype)
    model.save_pretrained(path, safe_serialization=True)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def edit_json(path: Path, **changes: Any) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def test_config_and_weights(tmp_path: Path) -> None:
    state = save_tiny(tmp_path)
    config = load_hf_checkpoint(tmp_path)
    assert config.architecture == "LlamaForCausalLM"
    assert (config.vocab_size, config.hidden_size, config.intermediate_size) == (64, 32, 48)
    assert (config.num_attention_heads, config.num_key_value_heads, config.head_dim) == (4, 2, 8)
    assert config.num_hidden_layers == 2 and config.max_position_embeddings == 128
    assert config.rope_theta == 50000.0 and config.rope_scaling is None
    assert not config.tie_word_embeddings and config.hidden_act == "silu"
    assert config.eos_token_ids == [2, 5] and config.extra["model_type"] == "llama"
    weights = dict(iter_safetensors_weights(tmp_path))
    assert sorted(weights) == sorted(state)
    for name, tensor in state.items():
        assert weights[name].dtype == torch.float32 and torch.equal(weights[name], tensor), name


def test_bf16_weights_come_out_float32(tmp_path: Path) -> None:
    state = save_tiny(tmp_path, dtype=torch.bfloat16)
    for name, tensor in iter_safetensors_weights(tmp_path):
        assert tensor.dtype == torch.float32
        assert torch.equal(tensor, state[name].float())


def test_sharded_checkpoint(tmp_path: Path) -> None:
    state = save_tiny(tmp_path)
    sharded = tmp_path / "sharded"
    model = transformers.LlamaForCausalLM.from_pretrained(tmp_path)
    model.save_pretrained(sharded, max_shard_size="20KB")
    assert len(list(sharded.glob("*.safetensors"))) > 1
    weights = dict(iter_safetensors_weights(sharded))
    assert sorted(weights) == sorted(state)
    assert all(torch.equal(weights[k], v) for k, v in state.items())


def test_index_cannot_escape_the_directory(tmp_path: Path) -> None:
    save_tiny(tmp_path / "m")
    (tmp_path / "m" / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"lm_head.weight": "../evil.safetensors"}})
    )
    with pytest.raises(CheckpointError, match="bad shard name"):
        list(iter_safetensors_weights(tmp_path / "m"))


def test_index_promises_missing_tensors(tmp_path: Path) -> None:
    save_tiny(tmp_path)
    (tmp_path / "model.safetensors.index.json").write_text(
        json.dumps({"weight_map": {"ghost.weight": "model.safetensors"}})
    )
    with pytest.raises(CheckpointError, match="ghost.weight"):
        list(iter_safetensors_weights(tmp_path))


def test_pickle_checkpoints_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_tiny(tmp_path)
    (tmp_path / "model.safetensors").unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"not really a pickle")

    def forbidden(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("torch.load must never be called")

    monkeypatch.setattr(torch, "load", forbidden)
    with pytest.raises(CheckpointError, match="refusing pickle"):
        list(iter_safetensors_weights(tmp_path))


def test_corrupt_safetensors(tmp_path: Path) -> None:
    save_tiny(tmp_path)
    (tmp_path / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match="not a valid safetensors file"):
        list(iter_safetensors_weights(tmp_path))


def test_path_validation(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        load_hf_checkpoint(tmp_path / "missing")
    (tmp_path / "file").write_text("x")
    with pytest.raises(CheckpointError, match="not a directory"):
        load_hf_checkpoint(tmp_path / "file")
    with pytest.raises(CheckpointError, match="config.json: missing"):
        load_hf_checkpoint(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(CheckpointError, match="expected a JSON object"):
        load_hf_checkpoint(tmp_path)


def test_config_variants(tmp_path: Path) -> None:
    save_tiny(tmp_path, tie_word_embeddings=True)
    cfg = tmp_path / "config.json"
    # Legacy keys: rope_theta + rope_scaling with "type"; single-int eos plus generation config.
    data = json.loads(cfg.read_text())
    data.pop("rope_parameters", None)
    data.update(
        rope_theta=123.0,
        rope_scaling={"type": "linear", "factor": 2.0},
        eos_token_id=7,
        head_dim=None,
    )
    cfg.write_text(json.dumps(data))
    edit_json(tmp_path / "generation_config.json", eos_token_id=[7, 9])
    config = load_hf_checkpoint(tmp_path)
    assert config.rope_theta == 123.0
    assert config.rope_scaling == {"rope_type": "linear", "factor": 2.0}
    assert config.eos_token_ids == [7, 9] and config.tie_word_embeddings
    assert config.head_dim == 8
    # rope_parameters (transformers >= 5) carries the theta and the scaling together.
    data.pop("rope_theta")
    data.pop("rope_scaling")
    data["rope_parameters"] = {"rope_type": "yarn", "rope_theta": 1e6, "factor": 4.0}
    cfg.write_text(json.dumps(data))
    config = load_hf_checkpoint(tmp_path)
    assert config.rope_theta == 1e6 and config.rope_scaling == {"rope_type": "yarn", "factor": 4.0}
    edit_json(cfg, num_attention_heads=0)
    with pytest.raises(CheckpointError, match="config.json"):
        load_hf_checkpoint(tmp_path)


def test_missing_tie_flag_is_read_from_weights(tmp_path: Path) -> None:
    save_tiny(tmp_path)  # untied: lm_head.weight is saved
    data = json.loads((tmp_path / "config.json").read_text())
    data.pop("tie_word_embeddings")
    (tmp_path / "config.json").write_text(json.dumps(data))
    assert load_hf_checkpoint(tmp_path).tie_word_embeddings is False
