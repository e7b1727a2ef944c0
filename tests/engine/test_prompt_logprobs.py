"""Prompt logprobs (``SamplingParams(prompt_logprobs=N)``) on a tiny random Llama: against
transformers' log_softmax at the position before each token, across chunked prefill and
batches, with no prefix-cache hit, once per request even after a preemption."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from heron import LLM, SamplingParams
from heron.outputs import Logprob, RequestOutput
from tests.models.tiny import build

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def tiny(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("llama3", tmp_path_factory.mktemp("tiny") / "llama3")


@pytest.fixture(scope="module")
def reference(tiny: Path) -> torch.nn.Module:
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(tiny), dtype=torch.float32)
    return model.eval()


def reference_logprobs(model: torch.nn.Module, ids: list[int]) -> torch.Tensor:
    """[len(ids) - 1, vocab]: row t - 1 is the distribution that scores token t."""
    with torch.no_grad():
        logits = model(torch.tensor([ids])).logits[0].float()
    return torch.log_softmax(logits, dim=-1)[:-1]


def prompt(n: int, seed: int) -> list[int]:
    return torch.randint(0, 256, (n,), generator=torch.Generator().manual_seed(seed)).tolist()


def check_against(ref: torch.Tensor, out: RequestOutput, k: int) -> None:
    ids = out.prompt_token_ids
    lps = out.prompt_logprobs
    assert lps is not None and len(lps) == len(ids) and lps[0] is None
    for t in range(1, len(ids)):
        entry = lps[t]
        assert entry is not None
        row = ref[t - 1]
        own = entry[ids[t]]
        assert math.isclose(own.logprob, row[ids[t]].item(), abs_tol=1e-4)
        assert own.rank == int((row > row[ids[t]]).sum()) + 1
        top = sorted(
            ((tid, lp) for tid, lp in entry.items() if lp.rank <= k), key=lambda x: x[1].rank
        )
        want = row.topk(k)
        assert [tid for tid, _ in top] == want.indices.tolist() or k == 0
        for (_, lp), value in zip(top, want.values.tolist(), strict=True):
            assert math.isclose(lp.logprob, value, abs_tol=1e-4)
        assert len(entry) in (k, k + 1)  # the top k, plus the token itself outside them


@pytest.mark.parametrize("chunk", [0, 5])
def test_prompt_logprobs_match_transformers(
    tiny: Path, reference: torch.nn.Module, chunk: int
) -> None:
    """Chunked (5-token chunks within a 12-token step budget) and whole prefills, a batch of
    prompts of which only some ask, give transformers' numbers for every prompt token."""
    llm = LLM(
        str(tiny),
        num_kv_blocks=64,
        block_size=4,
        long_prefill_token_threshold=chunk,
        max_num_batched_tokens=12 if chunk else 2048,
    )
    prompts = [prompt(n, s) for s, n in enumerate([23, 2, 9, 17])]
    asks = [
        SamplingParams(temperature=0.0, max_tokens=3, prompt_logprobs=3),
        SamplingParams(temperature=0.0, max_tokens=2, prompt_logprobs=0),
        SamplingParams(temperature=0.0, max_tokens=4),
        SamplingParams(temperature=0.0, max_tokens=2, prompt_logprobs=20),
    ]
    outs = llm.generate([{"prompt_token_ids": p} for p in prompts], asks)
    for out, params in zip(outs, asks, strict=True):
        if params.prompt_logprobs is None:
            assert out.prompt_logprobs is None
            continue
        check_against(
            reference_logprobs(reference, out.prompt_token_ids), out, params.prompt_logprobs
        )


def test_a_one_token_prompt_has_only_none(tiny: Path) -> None:
    llm = LLM(str(tiny), num_kv_blocks=16)
    out = llm.generate({"prompt_token_ids": [7]}, SamplingParams(max_tokens=1, prompt_logprobs=2))
    assert out[0].prompt_logprobs == [None]


def test_consistent_with_sampled_logprobs(tiny: Path) -> None:
    """Scoring prompt + the greedy output gives the logprobs the sampler reported for it."""
    llm = LLM(str(tiny), num_kv_blocks=64, block_size=4)
    ids = prompt(11, 9)
    first = llm.generate(
        {"prompt_token_ids": ids}, SamplingParams(temperature=0.0, max_tokens=5, logprobs=2)
    )[0].outputs[0]
    assert first.logprobs is not None
    again = llm.generate(
        {"prompt_token_ids": ids + first.token_ids},
        SamplingParams(max_tokens=1, prompt_logprobs=2),
    )[0]
    assert again.prompt_logprobs is not None
    for i, token in enumerate(first.token_ids):
        scored = again.prompt_logprobs[len(ids) + i]
        assert scored is not None
        sampled: Logprob = first.logprobs[i][token]
        assert math.isclose(scored[token].logprob, sampled.logprob, abs_tol=1e-4)
        assert scored[token].rank == sampled.rank == 1


def test_no_prefix_cache_hit_and_text(tiny: Path, reference: torch.nn.Module) -> None:
    """A cached prompt is still computed in full when it asks for prompt logprobs; the
    entries carry each token's text."""
    llm = LLM(str(tiny), num_kv_blocks=64, block_size=4)
    ids = prompt(21, 3)
    warm = llm.generate({"prompt_token_ids": ids}, SamplingParams(max_tokens=1))
    cached = llm.generate({"prompt_token_ids": ids}, SamplingParams(max_tokens=1))
    assert warm[0].num_cached_tokens == 0 and cached[0].num_cached_tokens > 0
    out = llm.generate({"prompt_token_ids": ids}, SamplingParams(max_tokens=1, prompt_logprobs=1))
    assert out[0].num_cached_tokens == 0
    check_against(reference_logprobs(reference, ids), out[0], 1)
    tok = llm.get_tokenizer()
    entry = out[0].prompt_logprobs[1]  # type: ignore[index]
    assert entry is not None
    assert entry[ids[1]].decoded_token == tok.decode([ids[1]], skip_special_tokens=False)


def test_n_siblings_share_one_copy(tiny: Path, reference: torch.nn.Module) -> None:
    llm = LLM(str(tiny), num_kv_blocks=64, block_size=4)
    ids = prompt(13, 4)
    out = llm.generate(
        {"prompt_token_ids": ids}, SamplingParams(n=3, max_tokens=3, prompt_logprobs=1, seed=1)
    )[0]
    assert len(out.outputs) == 3
    check_against(reference_logprobs(reference, ids), out, 1)


def test_preemption_does_not_send_twice(tiny: Path, reference: torch.nn.Module) -> None:
    """A cache too small for both requests preempts one mid-run; its recompute scores no
    prompt position again, and every request still gets exactly one full copy."""
    llm = LLM(str(tiny), num_kv_blocks=12, block_size=4, long_prefill_token_threshold=4)
    engine = llm.engine
    prompts = [prompt(17, 5), prompt(19, 6)]
    params = SamplingParams(temperature=0.0, max_tokens=14, ignore_eos=True, prompt_logprobs=2)
    for i, p in enumerate(prompts):
        engine.add_request(str(i), p, params)
    sent: dict[str, int] = {}
    original = engine.core.step

    def counting_step():  # type: ignore[no-untyped-def]
        outputs = original()
        for o in outputs:
            if o.prompt_logprobs is not None:
                sent[o.request_id] = sent.get(o.request_id, 0) + 1
        return outputs

    engine.core.step = counting_step  # type: ignore[method-assign]
    final: dict[str, RequestOutput] = {}
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                final[out.request_id] = out
    assert engine.scheduler.num_preemptions > 0
    assert sent == {"0": 1, "1": 1}
    assert len(engine.core.prompt_logprobs) == 0
    for i, p in enumerate(prompts):
        check_against(reference_logprobs(reference, p), final[str(i)], 2)


def test_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=21)
    with pytest.raises(ValueError, match="prompt_logprobs"):
        SamplingParams(prompt_logprobs=-1)
