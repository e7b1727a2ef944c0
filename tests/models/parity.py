"""Logit parity of Heron against transformers on tiny checkpoints (see ``tiny.py``).

Heron runs a batch of mixed-length prompts through the paged cache with chunked prefill and
prefix caching on; every sampled step's logits must be within ``ATOL`` of transformers'
teacher-forced logits for the same tokens (both fp32; only summation order differs), and each
greedy token must be the reference's argmax wherever the top two logits are not a near-tie.
"""

from __future__ import annotations

from pathlib import Path

import torch

from heron import LLM, SamplingParams

ATOL = 1e-4
NEW_TOKENS = 12


def prompts() -> list[list[int]]:
    """Seven prompts of 3 to 40 byte tokens; the last two share a 20-token prefix."""
    g = torch.Generator().manual_seed(1)
    shared = torch.randint(0, 256, (20,), generator=g).tolist()
    lens = [3, 17, 40, 9, 33]
    out = [torch.randint(0, 256, (n,), generator=g).tolist() for n in lens]
    return out + [shared + [1, 2, 3], shared + [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]]


def paged_llm(model: str | Path) -> LLM:
    """Small blocks, 8-token prefill chunks and a 32-token step budget, prefix caching on."""
    return LLM(
        str(model),
        num_kv_blocks=64,
        block_size=4,
        long_prefill_token_threshold=8,
        max_num_batched_tokens=32,
        enable_prefix_caching=True,
    )


def capture_logits(llm: LLM) -> dict[str, list[torch.Tensor]]:
    """Each request's sampled-step logits, appended as the engine runs."""
    captured: dict[str, list[torch.Tensor]] = {}

    def hook(rows, logits):  # type: ignore[no-untyped-def]
        for row, lg in zip(rows, logits, strict=True):
            captured.setdefault(row.request.request_id, []).append(lg.clone())

    llm.engine.runner.logits_hook = hook
    return captured


def check_parity(model: str | Path, reference_dir: Path, label: str) -> float:
    """Run ``prompts()`` through Heron loading ``model`` (an HF directory or a GGUF file) and
    compare with transformers loading ``reference_dir``. Returns the worst logit difference."""
    from transformers import AutoModelForCausalLM

    llm = paged_llm(model)
    captured = capture_logits(llm)
    ps = prompts()
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    # staggered: the last prompt arrives after the others have run, to hit the prefix cache
    outs = llm.generate([{"prompt_token_ids": p} for p in ps[:-1]], params)
    outs += llm.generate([{"prompt_token_ids": ps[-1]}], params)
    assert llm.engine.kv_manager.block_pool.prefix_hits > 0

    ref = AutoModelForCausalLM.from_pretrained(str(reference_dir), dtype=torch.float32).eval()
    worst = 0.0
    for prompt, out in zip(ps, outs, strict=True):
        gen = out.outputs[0].token_ids
        assert len(gen) == NEW_TOKENS
        with torch.inference_mode():
            full = torch.tensor([prompt + gen])
            ref_logits = ref(input_ids=full).logits[0, len(prompt) - 1 : -1]
        ours = torch.stack(captured[out.request_id])
        diff = (ours - ref_logits).abs().max().item()
        worst = max(worst, diff)
        assert diff <= ATOL, f"{label}: prompt of {len(prompt)} tokens, max diff {diff:.2e}"
        top2 = ref_logits.topk(2, dim=-1).values
        clear = (top2[:, 0] - top2[:, 1]) > 10 * ATOL
        assert (ref_logits.argmax(-1)[clear] == torch.tensor(gen)[clear]).all(), label
    print(f"{label}: worst max |logit diff| {worst:.2e}")
    return worst
