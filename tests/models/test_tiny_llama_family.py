"""Llama 3 (llama3 rope scaling), Mistral (sliding window) and Qwen2 (q/k/v bias, tied
embeddings) on tiny random weights, against transformers' reference classes.

Heron runs a batch of mixed-length prompts through the paged cache with chunked prefill and
prefix caching on; every sampled step's logits must be within ATOL of transformers'
teacher-forced logits for the same tokens (both fp32; only summation order differs).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from heron import LLM, SamplingParams
from tests.models.tiny import build

ATOL = 1e-4
NEW_TOKENS = 12


def prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    shared = torch.randint(0, 256, (20,), generator=g).tolist()
    lens = [3, 17, 40, 9, 33]
    out = [torch.randint(0, 256, (n,), generator=g).tolist() for n in lens]
    # two prompts share a 20-token prefix so that prefix caching hits
    return out + [shared + [1, 2, 3], shared + [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]]


@pytest.mark.parametrize("kind", ["llama3", "mistral", "qwen2"])
def test_logits_match_transformers(kind: str, tmp_path: Path) -> None:
    from transformers import AutoModelForCausalLM

    path = build(kind, tmp_path / kind)
    llm = LLM(
        str(path),
        num_kv_blocks=64,
        block_size=4,
        long_prefill_token_threshold=8,
        max_num_batched_tokens=32,
        enable_prefix_caching=True,
    )
    captured: dict[str, list[torch.Tensor]] = {}

    def hook(rows, logits):  # type: ignore[no-untyped-def]
        for row, lg in zip(rows, logits, strict=True):
            captured.setdefault(row.request.request_id, []).append(lg.clone())

    llm.engine.runner.logits_hook = hook
    ps = prompts()
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    # staggered: the last two arrive after the first ones have run, to hit the prefix cache
    first = llm.generate([{"prompt_token_ids": p} for p in ps[:-1]], params)
    last = llm.generate([{"prompt_token_ids": ps[-1]}], params)
    outs = first + last
    assert llm.engine.kv_manager.block_pool.prefix_hits > 0

    ref = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()
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
        assert diff <= ATOL, f"{kind}: prompt of {len(prompt)} tokens, max diff {diff:.2e}"
        # greedy tokens are the reference's argmax wherever the top two are not a near-tie
        top2 = ref_logits.topk(2, dim=-1).values
        clear = (top2[:, 0] - top2[:, 1]) > 10 * ATOL
        assert (ref_logits.argmax(-1)[clear] == torch.tensor(gen)[clear]).all()
    print(f"{kind}: worst max |logit diff| {worst:.2e}")


def test_mistral_sliding_window_is_applied(tmp_path: Path) -> None:
    """With a window of 16 and one layer (so the receptive field is the window itself),
    tokens more than 16 back must not influence the next token, while those inside do."""
    path = build("mistral", tmp_path / "m", num_hidden_layers=1)
    llm = LLM(str(path), num_kv_blocks=64, block_size=4)
    logits: list[torch.Tensor] = []
    llm.engine.runner.logits_hook = lambda rows, lg: logits.append(lg.clone())
    params = SamplingParams(temperature=0.0, max_tokens=1)
    tail = list(range(100, 116))  # the last 16 tokens
    llm.generate([{"prompt_token_ids": [1] * 20 + tail}], params)
    llm.generate([{"prompt_token_ids": [2] * 20 + tail}], params)
    llm.generate([{"prompt_token_ids": [2] * 20 + [9] + tail[1:]}], params)
    torch.testing.assert_close(logits[0], logits[1], atol=1e-5, rtol=0)
    assert (logits[0] - logits[2]).abs().max() > 1e-3
