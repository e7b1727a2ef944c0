"""Where the first step of a conversation turn goes: new tokens against cached context.

    .venv/bin/python -m benchmarks.turns

Runs SmolLM2-135M (Q4_1, the serving defaults) in process and times single engine steps that
prefill ``new`` tokens on top of ``cached`` tokens found in the prefix cache, with the shapes
of ``heron bench -w multi-turn``: turn 1 prefills 24 tokens after 24 cached ones (the chat
template's system prompt), turn 3 prefills 27 after 470 (two turns of history, the last
reply's partial block included). The middle row, 27 new tokens after 24 cached, separates
the cost of the extra tokens from the cost of attending over the history. The last column
times the paged-attention kernel alone for the same queries and context, x 30 layers.
Random token ids; each run uses a fresh context so nothing but the intended prefix is cached.
"""

from __future__ import annotations

import random
import statistics
import time

import torch

from heron import LLM, SamplingParams
from heron.kernels import require_cpu_kernels
from heron.packaged import find_packaged_model

CASES = [("turn 1", 24, 24), ("27 new, short history", 24, 27), ("turn 3", 470, 27)]
RUNS = 9
ONE = SamplingParams(temperature=0.0, max_tokens=1)


def step_ms(llm: LLM, cached: int, new: int, rng: random.Random) -> float:
    """Cache ``cached`` tokens (a finished request leaves them, its partial block as a tail),
    then time the one engine step that prefills ``new`` tokens after them."""
    engine = llm.engine
    history = [rng.randrange(1000, 40000) for _ in range(cached + 1)]
    llm.generate({"prompt_token_ids": history}, ONE)
    prompt = history[:cached] + [rng.randrange(1000, 40000) for _ in range(new)]
    engine.add_request("probe", prompt, ONE)
    start = time.perf_counter()
    engine.step()
    elapsed = (time.perf_counter() - start) * 1e3
    while engine.has_unfinished_requests():
        engine.step()
    return elapsed


def attention_ms(cached: int, new: int, heads: int = 9, kv_heads: int = 3) -> float:
    """The paged-attention kernel for ``new`` query tokens after ``cached``, x 30 layers."""
    k = require_cpu_kernels()
    bs, dim = 8, 64
    blocks = (cached + new + bs - 1) // bs
    k_cache = torch.randn(blocks + 8, bs, kv_heads, dim)
    v_cache = torch.randn_like(k_cache)
    table = torch.randperm(blocks + 8)[:blocks].repeat(new, 1)
    lens = torch.arange(cached + 1, cached + new + 1)
    q = torch.randn(new, heads, dim)
    for _ in range(20):
        k.paged_decode_attention(q, k_cache, v_cache, table, lens, 0.125, 0, 0.0)
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(50):
            k.paged_decode_attention(q, k_cache, v_cache, table, lens, 0.125, 0, 0.0)
        runs.append((time.perf_counter() - t) / 50 * 1e3 * 30)
    return statistics.median(runs)


def main() -> None:
    llm = LLM(find_packaged_model("smollm2"), quantization="auto", max_model_len=2048)
    rng = random.Random(0)
    step_ms(llm, 24, 24, rng)  # warm-up
    print("| case | cached | new | step p50 ms | attention kernel ms (30 layers) |")
    print("|---|---|---|---|---|")
    for name, cached, new in CASES:
        times = [step_ms(llm, cached, new, rng) for _ in range(RUNS)]
        hits = llm.engine.kv_manager.block_pool.prefix_hits
        assert hits > 0
        print(
            f"| {name} | {cached} | {new} | {statistics.median(times):.1f} "
            f"| {attention_ms(cached, new):.1f} |"
        )


if __name__ == "__main__":
    main()
