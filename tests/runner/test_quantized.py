"""The serving fast path (``quantization="auto"``, what ``heron serve`` runs by default) against the exact fp32 reference, on SmolLM2-135M's real weights.

The check: the reference decodes greedily with its top-2 logprobs; then, teacher-forced on the
reference's own tokens, the quantized model picks the next token at every step. Where the
two disagree, the reference's top two tokens must be a near-tie (logit margin below
``NEAR_TIE``), and nearly every step must agree.
"""

from __future__ import annotations

import pytest

from heron import LLM, SamplingParams
from heron.kernels import cpu_kernels
from heron.packaged import find_packaged_model
from tests.models.prompts import PROMPTS

pytestmark = pytest.mark.slow

NEAR_TIE = 0.5  # logit units; int8 activation rounding moves SmolLM2's logits by ~0.1
STEPS = 32
FAST = {"kv_cache_memory_bytes": 64 << 20, "quantization": "auto"}


@pytest.fixture(scope="module")
def model_path() -> str:
    if cpu_kernels() is None:
        pytest.skip("Heron's CPU kernels could not be built here")
    return find_packaged_model("smollm2")


def test_quantized_greedy_differs_only_at_near_ties(model_path: str) -> None:
    ref = LLM(model_path, kv_cache_memory_bytes=64 << 20)
    outs = ref.generate(
        PROMPTS, SamplingParams(temperature=0, max_tokens=STEPS, logprobs=2, ignore_eos=True)
    )
    del ref
    quant = LLM(**FAST, model=model_path)
    kinds = quant.engine.runner.quantization
    assert kinds == {"q4_1": 120, "q8_0": 1}  # every Q4_1 linear kept exact, lm_head Q8_0
    prefixes, expected, margins = [], [], []
    for out in outs:
        tokens = out.outputs[0].token_ids
        assert out.outputs[0].logprobs is not None
        for t, entry in enumerate(out.outputs[0].logprobs):
            top = sorted((lp.logprob for lp in entry.values()), reverse=True)
            prefixes.append({"prompt_token_ids": out.prompt_token_ids + tokens[:t]})
            expected.append(tokens[t])
            margins.append(top[0] - top[1])
    got = quant.generate(prefixes, SamplingParams(temperature=0, max_tokens=1, ignore_eos=True))
    picks = [g.outputs[0].token_ids[0] for g in got]
    disagree = [m for p, e, m in zip(picks, expected, margins, strict=True) if p != e]
    assert all(m < NEAR_TIE for m in disagree), disagree
    assert len(disagree) <= len(expected) // 20, (len(disagree), len(expected))


def test_quantized_serving_is_batch_invariant(model_path: str) -> None:
    llm = LLM(**FAST, model=model_path)
    params = SamplingParams(temperature=0, max_tokens=24, ignore_eos=True)
    together = [o.outputs[0].token_ids for o in llm.generate(PROMPTS, params)]
    alone = [llm.generate(p, params)[0].outputs[0].token_ids for p in PROMPTS]
    assert together == alone


def test_cpu_backend_with_a_cache_the_kernels_cannot_read(model_path: str) -> None:
    # A bfloat16 cache: the cpu backend must fall back to the torch path (no fused layer).
    params = SamplingParams(temperature=0, max_tokens=8)
    outs = [
        LLM(
            model_path,
            attention_backend=backend,
            kv_cache_dtype="bfloat16",
            kv_cache_memory_bytes=32 << 20,
        ).generate(PROMPTS[:2], params)
        for backend in ("cpu", "torch")
    ]
    assert [o.outputs[0].token_ids for o in outs[0]] == [o.outputs[0].token_ids for o in outs[1]]
