"""Batching, prefix caching, preemption and chunked prefill must not change greedy output.

Each case runs the same eight prompts and compares with every prompt run alone (one request
in the engine at a time, prefix caching off).
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from heron import LLM, SamplingParams
from heron.engine.llm_engine import LLMEngine
from tests.models.prompts import PROMPTS, SYSTEM_PREFIX

NUM_TOKENS = 64
PARAMS = SamplingParams(temperature=0.0, max_tokens=NUM_TOKENS, ignore_eos=True)
KV = 64 << 20

pytestmark = pytest.mark.slow


def alone(path: str, prompts: list[str]) -> list[list[int]]:
    llm = LLM(path, kv_cache_memory_bytes=KV, enable_prefix_caching=False)
    return [llm.generate(p, PARAMS)[0].outputs[0].token_ids for p in prompts]


@pytest.fixture(scope="module")
def baseline(smollm2_path: str) -> list[list[int]]:
    return alone(smollm2_path, PROMPTS)


@pytest.fixture(scope="module")
def baseline_with_system(smollm2_path: str) -> list[list[int]]:
    return alone(smollm2_path, [SYSTEM_PREFIX + p for p in PROMPTS])


def run_staggered(
    engine: LLMEngine,
    prompts: list[str],
    every: int,
    on_step: Callable[[LLMEngine], None] | None = None,
) -> list[list[int]]:
    """Add prompt i at step i * every; step until all finish."""
    done: dict[str, list[int]] = {}
    pending = list(enumerate(prompts))
    step = 0
    while pending or engine.has_unfinished_requests():
        while pending and pending[0][0] * every <= step:
            i, p = pending.pop(0)
            engine.add_request(str(i), p, PARAMS)
        for out in engine.step():
            if out.finished:
                done[out.request_id] = out.outputs[0].token_ids
        if on_step is not None:
            on_step(engine)
        step += 1
    return [done[str(i)] for i in range(len(prompts))]


def test_batched_with_staggered_arrivals(smollm2_path: str, baseline: list[list[int]]) -> None:
    llm = LLM(smollm2_path, kv_cache_memory_bytes=KV, enable_prefix_caching=False)
    assert run_staggered(llm.engine, PROMPTS, every=3) == baseline


def test_prefix_caching_with_shared_system_prompt(
    smollm2_path: str, baseline_with_system: list[list[int]]
) -> None:
    llm = LLM(smollm2_path, kv_cache_memory_bytes=KV, enable_prefix_caching=True)
    prompts = [SYSTEM_PREFIX + p for p in PROMPTS]
    engine = llm.engine
    assert run_staggered(engine, prompts, every=2) == baseline_with_system
    # every prompt after the first reuses the system prompt's full blocks
    shared = len(engine.tokenizer.encode(SYSTEM_PREFIX)) // 16 * 16
    assert shared >= 32
    assert engine.kv_manager.block_pool.prefix_hits >= 7 * shared


def test_preemption_small_kv_pool(smollm2_path: str, baseline: list[list[int]]) -> None:
    # 8 requests need ~48 blocks of 16 tokens at the end; 24 forces recompute preemption.
    llm = LLM(smollm2_path, num_kv_blocks=24, enable_prefix_caching=False)
    outs = llm.generate(PROMPTS, PARAMS)
    assert [o.outputs[0].token_ids for o in outs] == baseline
    assert llm.engine.scheduler.num_preemptions > 0


def test_chunked_prefill_16_token_chunks(smollm2_path: str, baseline: list[list[int]]) -> None:
    llm = LLM(
        smollm2_path,
        kv_cache_memory_bytes=KV,
        enable_prefix_caching=False,
        long_prefill_token_threshold=16,
        max_num_batched_tokens=48,
    )
    chunks: list[int] = []
    engine = llm.engine
    orig = engine.scheduler.schedule

    def spy():  # type: ignore[no-untyped-def]
        out = orig()
        chunks.extend(s.num_scheduled_tokens for s in out.scheduled if not s.sample)
        return out

    engine.scheduler.schedule = spy  # type: ignore[method-assign]
    assert run_staggered(engine, PROMPTS, every=1) == baseline
    assert chunks and max(chunks) == 16  # some prompts really were split into 16-token chunks


def test_next_turns_reuse_the_previous_replys_partial_block(smollm2_path: str) -> None:
    # Each conversation's turn 2 is its turn 1 prompt, the whole reply, then more text, so it
    # reuses turn 1's full blocks and the reply's partly filled last block (a tail).
    llm = LLM(smollm2_path, kv_cache_memory_bytes=KV, enable_prefix_caching=True)
    ref = LLM(smollm2_path, kv_cache_memory_bytes=KV, enable_prefix_caching=False)
    tok = llm.engine.tokenizer
    more = tok.encode(" Now say it again, more briefly.")
    bs = llm.engine.kv_manager.block_size
    for i, prompt in enumerate(PROMPTS[:4]):
        ids = tok.encode(prompt)
        params = SamplingParams(temperature=0.0, max_tokens=NUM_TOKENS + i, ignore_eos=True)
        first = llm.generate({"prompt_token_ids": ids}, params)[0].outputs[0].token_ids
        turn2 = ids + first + more
        computed = len(ids) + len(first) - 1  # the last sampled token was never fed
        assert computed % bs  # these lengths leave a partial block to reuse
        out = llm.generate({"prompt_token_ids": turn2}, PARAMS)[0]
        assert out.num_cached_tokens == computed
        expected = ref.generate({"prompt_token_ids": turn2}, PARAMS)[0].outputs[0].token_ids
        assert out.outputs[0].token_ids == expected
    assert llm.engine.kv_manager.block_pool.tail_blocks  # the turn-2 replies left tails
