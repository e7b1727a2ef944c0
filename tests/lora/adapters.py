"""Random LoRA adapters for the tiny checkpoints (``tests/models/tiny.py``): PEFT directories
made with ``peft`` itself (lora_B random too, so every target matters), the merged
transformers reference, and llama.cpp-layout GGUF adapters written with ``gguf``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from heron import LLM, SamplingParams
from tests.models.tiny import _GGUF_LAYER_NAMES, build

ALL_TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
PHI3_TARGETS = ["qkv_proj", "o_proj", "gate_up_proj", "down_proj"]
NEW_TOKENS = 10


def targets_for(kind: str) -> list[str]:
    return PHI3_TARGETS if kind.startswith("phi3") else ALL_TARGETS


def make_peft(
    base: Path,
    out: Path,
    rank: int,
    *,
    targets: list[str] | None = None,
    alpha: float | None = None,
    rslora: bool = False,
    seed: int = 0,
) -> Path:
    """Save a PEFT LoRA adapter of ``rank`` for the HF checkpoint ``base`` with every factor
    drawn from N(0, 0.1) (seeded); ``alpha`` defaults to 2 * rank."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32)
    config = LoraConfig(
        r=rank,
        lora_alpha=alpha if alpha is not None else 2 * rank,
        target_modules=targets or ALL_TARGETS,
        lora_dropout=0.0,
        use_rslora=rslora,
    )
    peft_model = get_peft_model(model, config)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if "lora_" in name:
                p.copy_(torch.randn(p.shape, generator=g) * 0.1)
    peft_model.save_pretrained(str(out))
    return out


def merged_reference(base: Path, adapter: Path | None, held: str | None = "float16") -> Any:
    """transformers' model of ``base`` with ``adapter`` merged into its weights (None: the
    base alone). ``held``: first round the adapter's factors as Heron's slots hold them
    (``LoRAConfig.lora_dtype``: lora_A, and lora_B times the scale, in that dtype), so the
    reference computes from the very weights Heron does; None keeps PEFT's float32."""
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(base), dtype=torch.float32).eval()
    if adapter is None:
        return model
    peft_model = PeftModel.from_pretrained(model, str(adapter))
    if held is not None:
        round_as_held(peft_model, getattr(torch, held))
    return peft_model.merge_and_unload().eval()


@torch.no_grad()
def round_as_held(peft_model: Any, dtype: torch.dtype) -> None:
    """Round every LoRA factor of ``peft_model`` (its "default" adapter) to ``dtype`` the way
    Heron's slots do: A itself, B with the scale folded in (so B holds round(B * s) / s)."""
    for module in peft_model.modules():
        if not hasattr(module, "lora_A") or "default" not in module.lora_A:
            continue
        scale = module.scaling["default"]
        a = module.lora_A["default"].weight
        b = module.lora_B["default"].weight
        a.copy_(a.to(dtype).float())
        b.copy_((b * scale).to(dtype).float() / scale)


def reference_logits(model: Any, prompt: list[int], gen: list[int]) -> torch.Tensor:
    """Teacher-forced logits [len(gen), vocab] of ``gen`` after ``prompt``."""
    with torch.inference_mode():
        full = torch.tensor([prompt + gen])
        logits: torch.Tensor = model(input_ids=full).logits[0, len(prompt) - 1 : -1]
    return logits


def prompts(n: int, seed: int = 1) -> list[list[int]]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (int(k),), generator=g).tolist() for k in [5, 19, 33, 11][:n]]


def lora_llm(model: Path | str, **kwargs: Any) -> LLM:
    """Small blocks and steps (chunked prefill), LoRA on."""
    settings: dict[str, Any] = {
        "num_kv_blocks": 128,
        "block_size": 4,
        "long_prefill_token_threshold": 8,
        "max_num_batched_tokens": 32,
        "enable_lora": True,
        "max_loras": 2,
        "max_lora_rank": 16,
    }
    return LLM(str(model), **{**settings, **kwargs})


def capture_logits(llm: LLM) -> dict[str, list[torch.Tensor]]:
    captured: dict[str, list[torch.Tensor]] = {}

    def hook(rows, logits):  # type: ignore[no-untyped-def]
        for row, lg in zip(rows, logits, strict=True):
            captured.setdefault(row.request.request_id, []).append(lg.clone())

    llm.engine.runner.logits_hook = hook
    return captured


def greedy(n: int = NEW_TOKENS) -> SamplingParams:
    return SamplingParams(temperature=0.0, max_tokens=n, ignore_eos=True)


def base_of(kind: str, directory: Path) -> Path:
    if kind == "gemma3":
        from tests.models.test_gemma3_tiny import build_gemma3

        return build_gemma3(directory, None, None)
    return build(kind, directory)


# ------------------------------------------------------------------ GGUF adapters
def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's converter's Q/K row interleave (the inverse of Heron's unpermute)."""
    return (
        w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:])
        .swapaxes(1, 2)
        .reshape(w.shape)
    )


def write_gguf_adapter(adapter: Path, path: Path, arch: str, hf_config: dict[str, Any]) -> Path:
    """Write the PEFT adapter in ``adapter`` as llama.cpp's converter lays out a GGUF LoRA
    for ``arch`` (F32 factors; Q/K ``lora_b`` rows interleaved for llama)."""
    import gguf
    from safetensors.torch import load_file

    settings = json.loads((adapter / "adapter_config.json").read_text())
    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(settings["lora_alpha"]))
    heads = {
        "q_proj": hf_config["num_attention_heads"],
        "k_proj": hf_config["num_key_value_heads"],
    }
    for name, tensor in load_file(str(adapter / "adapter_model.safetensors")).items():
        rest = name.split("layers.", 1)[1]  # "N.self_attn.q_proj.lora_A.weight"
        layer, parent, module, half, _ = rest.split(".")
        data = tensor.float().numpy()
        if arch == "llama" and half == "lora_B" and module in heads:
            data = _permute(data, heads[module])
        gguf_name = _GGUF_LAYER_NAMES[f"{parent}.{module}"]
        writer.add_tensor(f"blk.{layer}.{gguf_name}.weight.{half.lower()}", data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path
