"""Random PEFT adapters (rank 8 with rsLoRA, rank 16 plain; lora_B random) on the tiny
decoder families, against transformers with the adapter merged by PEFT: every sampled
step's logits within ATOL of the reference's teacher-forced logits (fp32), and the greedy
tokens the reference's argmax at every step."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from heron import LLM
from heron.lora import LoRARequest
from tests.lora.adapters import (
    base_of,
    capture_logits,
    greedy,
    lora_llm,
    make_peft,
    merged_reference,
    prompts,
    reference_logits,
    targets_for,
)

ATOL = 2e-4


def check_against_peft(kind: str, rank: int, tmp_path: Path, lora_dtype: str = "auto") -> None:
    """``lora_dtype``: the slots' precision; the reference rounds the adapter the same way
    (float16 for "auto"), so the comparison is of the computation alone."""
    base = base_of(kind, tmp_path / "base")
    adapter = make_peft(base, tmp_path / "lora", rank, targets=targets_for(kind), rslora=rank == 8)
    llm = lora_llm(base, lora_dtype=lora_dtype)
    captured = capture_logits(llm)
    ps = prompts(3)
    lora = LoRARequest("tuned", 1, str(adapter))
    outs = llm.generate([{"prompt_token_ids": p} for p in ps], greedy(), lora_request=lora)
    held = "float16" if lora_dtype == "auto" else lora_dtype
    ref, plain = merged_reference(base, adapter, held), merged_reference(base, None)
    for prompt, out in zip(ps, outs, strict=True):
        gen = out.outputs[0].token_ids
        want = reference_logits(ref, prompt, gen)
        ours = torch.stack(captured[out.request_id])
        diff = (ours - want).abs().max().item()
        assert diff <= ATOL, f"{kind} rank {rank}: max logit diff {diff:.2e}"
        assert want.argmax(-1).tolist() == gen, kind
        # the adapter changes the model: the base's logits are far from these
        assert (reference_logits(plain, prompt, gen) - want).abs().max() > 0.05


def test_llama_rank16_matches_merged_peft(tmp_path: Path) -> None:
    check_against_peft("llama3", 16, tmp_path)


def test_float32_slots_match_unrounded_peft(tmp_path: Path) -> None:
    """``lora_dtype="float32"``: PEFT's own float32 factors, nothing rounded."""
    check_against_peft("llama3", 8, tmp_path, lora_dtype="float32")


def test_float16_slots_round_only_the_adapter(tmp_path: Path) -> None:
    """The float16 slots' only error is the adapter's rounding: against the unrounded
    reference they are off by far more than the computation's own error (so the rounded
    reference above is not vacuous), yet far less than the adapter's effect, with the same
    greedy tokens."""
    base = base_of("llama3", tmp_path / "base")
    adapter = make_peft(base, tmp_path / "lora", 16, seed=4)
    llm = lora_llm(base)
    captured = capture_logits(llm)
    lora = LoRARequest("tuned", 1, str(adapter))
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts(2)], greedy(), lora_request=lora)
    exact, plain = merged_reference(base, adapter, None), merged_reference(base, None)
    for prompt, out in zip(prompts(2), outs, strict=True):
        gen = out.outputs[0].token_ids
        want = reference_logits(exact, prompt, gen)
        error = (torch.stack(captured[out.request_id]) - want).abs().max().item()
        effect = (reference_logits(plain, prompt, gen) - want).abs().max().item()
        assert ATOL < error < effect / 20, (error, effect)
        assert want.argmax(-1).tolist() == gen


@pytest.mark.slow
@pytest.mark.parametrize(
    ("kind", "rank"),
    [
        ("llama3", 8),
        ("mistral", 16),
        ("qwen2", 8),
        ("qwen2", 16),
        ("qwen3", 16),
        ("phi3", 8),
        ("phi3", 16),
        ("gemma3", 8),
        ("gemma3", 16),
    ],
)
def test_family_matches_merged_peft(kind: str, rank: int, tmp_path: Path) -> None:
    check_against_peft(kind, rank, tmp_path)


def test_quantized_base_with_adapter_matches_float_base(tmp_path: Path) -> None:
    """q8_0 base weights (Heron's kernels) plus the adapter's float delta: the same greedy
    tokens and logits as the float32 base with the adapter, within activation rounding."""
    base = base_of("llama3", tmp_path / "base")
    adapter = make_peft(base, tmp_path / "lora", 16, seed=3)
    lora = LoRARequest("tuned", 1, str(adapter))
    ps = [{"prompt_token_ids": p} for p in prompts(3)]
    exact, quant = lora_llm(base), lora_llm(base, quantization="q8_0")

    def first_logits(llm: LLM, lora: LoRARequest | None) -> list[torch.Tensor]:
        got = capture_logits(llm)
        outs = llm.generate(ps, greedy(1), lora_request=lora)
        return [got[o.request_id][0] for o in outs]

    exact_base = first_logits(exact, None)
    quant_base = first_logits(quant, None)
    exact_lora, quant_lora = first_logits(exact, lora), first_logits(quant, lora)
    for qb, eb, ql, el in zip(quant_base, exact_base, quant_lora, exact_lora, strict=True):
        gap, effect = (qb - eb).abs().max().item(), (el - eb).abs().max().item()
        # the adapter adds no error of its own: the quantized base's rounding, carried
        # through the adapter, stays of its order, far below the adapter's own effect
        error = (ql - el).abs().max().item()
        assert error <= 3 * gap + 1e-3 and error < effect / 5
        assert ql.argmax() == el.argmax()
