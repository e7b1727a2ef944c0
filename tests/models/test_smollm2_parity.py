"""SmolLM2-135M-Instruct (Q4_1 GGUF) against HF transformers loading the same file.

transformers dequantizes the GGUF to fp32; Heron does too (the default, exact path). Greedy
token ids must be equal, prompt token ids equal, and logits close.

Tolerance: every logit within LOGIT_ATOL absolute of the reference at every step. Both sides
compute in fp32; only summation order differs (SDPA vs paged gather, fused vs separate
projections), which moves logits of magnitude ~20 by about 1e-4.
"""

from __future__ import annotations

import os

import pytest
import torch

from heron import LLM, SamplingParams
from tests.models.prompts import PROMPTS

NUM_TOKENS = 64
LOGIT_ATOL = 2e-3

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def reference(smollm2_path: str) -> list[tuple[list[int], list[int], torch.Tensor]]:
    """For each prompt: (prompt ids, 64 greedy ids, logits [64, vocab]) from transformers."""
    from transformers import AutoModelForCausalLM, AutoTokenizer, DynamicCache

    directory, name = os.path.split(smollm2_path)
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    model.eval()
    results = []
    with torch.inference_mode():
        for prompt in PROMPTS:
            ids = tok(prompt)["input_ids"]
            cache = DynamicCache()
            step_input = torch.tensor([ids])
            out_ids, logits = [], []
            for _ in range(NUM_TOKENS):
                out = model(input_ids=step_input, cache=cache, use_cache=True)
                last = out.logits[0, -1].float()
                nxt = int(last.argmax())
                out_ids.append(nxt)
                logits.append(last)
                step_input = torch.tensor([[nxt]])
            results.append((ids, out_ids, torch.stack(logits)))
    return results


def test_greedy_tokens_logits_and_prompt_ids_match(
    smollm2_path: str, reference: list[tuple[list[int], list[int], torch.Tensor]]
) -> None:
    llm = LLM(smollm2_path, kv_cache_memory_bytes=64 << 20)
    captured: dict[str, list[torch.Tensor]] = {}

    def hook(rows, logits):  # type: ignore[no-untyped-def]
        for row, lg in zip(rows, logits, strict=True):
            captured.setdefault(row.request.request_id, []).append(lg.clone())

    llm.engine.runner.logits_hook = hook
    params = SamplingParams(temperature=0.0, max_tokens=NUM_TOKENS, ignore_eos=True)
    outputs = llm.generate(PROMPTS, params)
    worst = 0.0
    for i, (out, (ref_prompt, ref_ids, ref_logits)) in enumerate(
        zip(outputs, reference, strict=True)
    ):
        assert out.prompt_token_ids == ref_prompt, PROMPTS[i]
        assert out.outputs[0].token_ids == ref_ids, PROMPTS[i]
        ours = torch.stack(captured[out.request_id])
        assert ours.shape == ref_logits.shape
        diff = (ours - ref_logits).abs().max().item()
        worst = max(worst, diff)
        assert diff <= LOGIT_ATOL, f"{PROMPTS[i]!r}: max |logit diff| {diff:.2e}"
    print(f"worst max |logit diff| over 8 prompts x {NUM_TOKENS} steps: {worst:.2e}")
