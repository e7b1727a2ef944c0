"""Random PEFT LoRA adapters for the packaged SmolLM2, written as ``peft`` saves them
(``adapter_config.json`` + ``adapter_model.safetensors``), for the surface tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

from heron.config import ModelConfig
from heron.loader import load_checkpoint
from heron.packaged import find_packaged_model

TARGETS = ("q_proj", "v_proj")


def smollm2_config() -> ModelConfig:
    return load_checkpoint(find_packaged_model("smollm2")).config


def write_peft_adapter(
    directory: Path,
    rank: int = 8,
    seed: int = 0,
    targets: tuple[str, ...] = TARGETS,
    wrong_shape: bool = False,
    scale: float = 0.15,
) -> Path:
    """A rank-``rank`` adapter on every layer's ``targets`` with a nonzero B (``scale`` its
    standard deviation: enough to change greedy tokens, little enough to keep the output
    text-like, away from near-ties). ``wrong_shape`` gives q_proj's A one input column too
    many. Returns ``directory``."""
    cfg = smollm2_config()
    rng = np.random.default_rng(seed)
    out_dims = {
        "q_proj": cfg.num_attention_heads * cfg.head_dim,
        "k_proj": cfg.num_key_value_heads * cfg.head_dim,
        "v_proj": cfg.num_key_value_heads * cfg.head_dim,
        "o_proj": cfg.hidden_size,
    }
    tensors: dict[str, np.ndarray] = {}
    for layer in range(cfg.num_hidden_layers):
        for target in targets:
            in_dim = cfg.hidden_size + (1 if wrong_shape and target == "q_proj" else 0)
            prefix = f"base_model.model.model.layers.{layer}.self_attn.{target}"
            a = rng.standard_normal((rank, in_dim), dtype=np.float32) * 0.05
            b = rng.standard_normal((out_dims[target], rank), dtype=np.float32) * scale
            tensors[f"{prefix}.lora_A.weight"] = a
            tensors[f"{prefix}.lora_B.weight"] = b
    directory.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct",
        "r": rank,
        "lora_alpha": 2 * rank,
        "lora_dropout": 0.0,
        "target_modules": list(targets),
        "bias": "none",
        "fan_in_fan_out": False,
        "use_rslora": False,
    }
    (directory / "adapter_config.json").write_text(json.dumps(config))
    (directory / "README.md").write_text("a random adapter for tests\n")
    return directory


def corrupt(directory: Path) -> Path:
    """Cut the adapter's safetensors file in half."""
    path = directory / "adapter_model.safetensors"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return directory


def write_gguf_adapter(path: Path, peft_dir: Path) -> Path:
    """The PEFT adapter at ``peft_dir`` (v_proj and o_proj targets only: llama.cpp permutes
    the rows of q/k) as a llama.cpp GGUF LoRA file with the same scale."""
    import gguf
    from safetensors.numpy import load_file

    config = json.loads((peft_dir / "adapter_config.json").read_text())
    names = {"v_proj": "attn_v", "o_proj": "attn_output"}
    writer = gguf.GGUFWriter(path, "llama")
    writer.add_string("general.type", "adapter")
    writer.add_string("adapter.type", "lora")
    writer.add_float32("adapter.lora.alpha", float(config["lora_alpha"]))
    for key, tensor in sorted(load_file(str(peft_dir / "adapter_model.safetensors")).items()):
        parts = key.split(".")  # base_model.model.model.layers.N.self_attn.T.lora_X.weight
        layer, target, half = parts[4], parts[6], parts[7][-1].lower()
        writer.add_tensor(f"blk.{layer}.{names[target]}.weight.lora_{half}", tensor)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
