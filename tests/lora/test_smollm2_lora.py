"""The packaged SmolLM2 (a real Q4_1 GGUF) with a random rank-16 adapter on every target:
the LoRA path gives the tokens of the same weights with the adapter merged in (float32), and
the quantized base (Heron's kernels, fused decode when no adapter runs) plus the adapter
stays within the quantization's own distance of the float32 path."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file

from heron import LLM, SamplingParams
from heron.config import ModelConfig
from heron.kernels.fused import bind_fused_decoder
from heron.loader import load_checkpoint
from heron.lora import LoRARequest, load_adapter
from heron.lora.targets import TARGET_PARENTS, model_targets
from tests.lora.adapters import ALL_TARGETS, write_gguf_adapter

pytestmark = pytest.mark.slow

PROMPTS = ["The capital of France is", "def fibonacci(n):", "Once upon a time"]
PARAMS = SamplingParams(temperature=0.0, max_tokens=12, ignore_eos=True)


def write_random_peft(config: ModelConfig, out: Path, rank: int, seed: int = 0) -> Path:
    """A PEFT directory with N(0, 0.03) factors on every target of every layer."""
    g = torch.Generator().manual_seed(seed)
    targets = model_targets(config)
    tensors: dict[str, torch.Tensor] = {}
    for layer in range(config.num_hidden_layers):
        for name in ALL_TARGETS:
            t = targets[name]
            prefix = f"base_model.model.model.layers.{layer}.{TARGET_PARENTS[name]}.{name}"
            a = torch.randn(rank, t.in_features, generator=g) * 0.03
            tensors[f"{prefix}.lora_A.weight"] = a
            tensors[f"{prefix}.lora_B.weight"] = (
                torch.randn(t.out_features, rank, generator=g) * 0.03
            )
    out.mkdir(parents=True)
    save_file(tensors, str(out / "adapter_model.safetensors"))
    settings = {"peft_type": "LORA", "r": rank, "lora_alpha": rank, "target_modules": ALL_TARGETS}
    (out / "adapter_config.json").write_text(json.dumps(settings))
    return out


def run(llm: LLM, lora: LoRARequest | None) -> tuple[list[list[int]], list[torch.Tensor]]:
    """Greedy tokens per prompt and each prompt's first-step logits."""
    first: dict[str, torch.Tensor] = {}

    def hook(rows, logits):  # type: ignore[no-untyped-def]
        for row, lg in zip(rows, logits, strict=True):
            first.setdefault(row.request.request_id, lg.clone())

    llm.engine.runner.logits_hook = hook
    outs = llm.generate(PROMPTS, PARAMS, lora_request=lora)
    return [o.outputs[0].token_ids for o in outs], [first[o.request_id] for o in outs]


def test_smollm2_with_random_adapter(smollm2_path: str, tmp_path: Path) -> None:
    checkpoint = load_checkpoint(smollm2_path)
    config = checkpoint.config
    checkpoint.close()
    adapter = write_random_peft(config, tmp_path / "lora", 16)
    lora = LoRARequest("random", 1, str(adapter))
    weights = load_adapter(str(adapter), config, 16)
    heads = {"num_attention_heads": 9, "num_key_value_heads": 3}
    assert (config.num_attention_heads, config.num_key_value_heads) == (9, 3)
    gguf = write_gguf_adapter(adapter, tmp_path / "random.gguf", "llama", heads)
    assert load_adapter(str(gguf), config, 16).digest == weights.digest

    common: dict[str, Any] = {"num_kv_blocks": 256, "enable_lora": True, "max_lora_rank": 16}
    exact = LLM(smollm2_path, quantization=None, **common)
    tokens, logits = run(exact, lora)
    base_tokens, _ = run(exact, None)
    assert tokens != base_tokens  # the adapter matters

    # the same adapter merged into float32 weights, run without LoRA
    merged = LLM(smollm2_path, quantization=None, num_kv_blocks=256)
    model = merged.engine.runner.model
    targets = model_targets(config)
    with torch.no_grad():
        for (layer, name), m in weights.modules.items():
            t = targets[name]
            linear = model.get_submodule(f"layers.{layer}.{t.module}")
            rows = slice(t.row_start, t.row_start + t.out_features)
            linear.weight[rows] += m.scale * (m.b @ m.a)
    runner = merged.engine.runner  # the fused decoder reads the weights: bind it again
    model.fused = bind_fused_decoder(model, runner.kv_caches, runner.backend, runner.kernels)
    merged_tokens, merged_logits = run(merged, None)
    assert tokens == merged_tokens
    for ours, want in zip(logits, merged_logits, strict=True):
        torch.testing.assert_close(ours, want, atol=2e-3, rtol=0)

    quant = LLM(smollm2_path, quantization="auto", **common)
    _, quant_base = run(quant, None)
    _, exact_base = run(exact, None)
    _, quant_logits = run(quant, lora)
    for qa, ea, qb, eb in zip(quant_logits, logits, quant_base, exact_base, strict=True):
        base_gap = (qb - eb).abs().max().item()
        # the quantized base's activation rounding, carried through the adapter: its order
        assert (qa - ea).abs().max().item() <= 3 * base_gap + 0.1
        assert qa.argmax() == ea.argmax()


def test_adapter_outputs_do_not_depend_on_threads(smollm2_path: str, tmp_path: Path) -> None:
    """The adapter's delta does not change with the engine's thread count (a float32 BLAS
    product would, and the quantized base's activation rounding would make it visible), so
    a server (whose threads follow the machine's load) answers as ``LLM(...)`` does."""
    checkpoint = load_checkpoint(smollm2_path)
    adapter = write_random_peft(checkpoint.config, tmp_path / "lora", 16)
    checkpoint.close()
    lora = LoRARequest("random", 1, str(adapter))
    params = SamplingParams(temperature=0.0, max_tokens=16, ignore_eos=True, logprobs=1)
    seen = []
    for threads in (1, 2):
        llm = LLM(
            smollm2_path,
            quantization="auto",
            enable_lora=True,
            num_threads=threads,
            kv_cache_memory_bytes=64 << 20,
        )
        out = llm.generate(PROMPTS[0], params, lora_request=lora)[0].outputs[0]
        assert out.logprobs is not None
        pairs = zip(out.logprobs, out.token_ids, strict=True)
        seen.append((out.token_ids, [lp[t].logprob for lp, t in pairs]))
    assert seen[0] == seen[1]
