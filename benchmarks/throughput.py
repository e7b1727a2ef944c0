"""Aggregate decode throughput of Heron's engine against HF transformers ``generate``.

Same model file, same prompt, same number of sequences and output tokens, measured in one
run. Usage: python -m benchmarks.throughput [--seqs 1 8 32] [--tokens 200]
"""

from __future__ import annotations

import argparse
import os
import time

import torch

from heron import LLM, SamplingParams
from heron.packaged import find_packaged_model

PROMPT = "Explain the difference between TCP and UDP in 3 sentences."
FLOP_PER_TOKEN = 2 * 134.5e6  # SmolLM2-135M: 2 x parameters per decoded token
PEAK_GFLOPS = 175.0  # fp32 matmul on this 2-core machine


def bench_hf(path: str, seqs: list[int], tokens: int) -> dict[int, float]:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    directory, name = os.path.split(path)
    tok = AutoTokenizer.from_pretrained(directory, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, dtype=torch.float32)
    model.eval()
    ids = tok(PROMPT, return_tensors="pt").input_ids
    results = {}
    with torch.inference_mode():
        model.generate(ids, max_new_tokens=4, do_sample=False)  # warm-up
        for n in seqs:
            batch = ids.repeat(n, 1)
            t0 = time.perf_counter()
            out = model.generate(
                batch,
                attention_mask=torch.ones_like(batch),  # identical prompts: no padding
                max_new_tokens=tokens,
                min_new_tokens=tokens,
                do_sample=False,
            )
            elapsed = time.perf_counter() - t0
            assert out.shape[1] - ids.shape[1] == tokens
            results[n] = n * tokens / elapsed
    return results


def bench_heron(
    path: str, seqs: list[int], tokens: int, quantization: str | None
) -> dict[int, float]:
    llm = LLM(path, quantization=quantization, kv_cache_memory_bytes=512 << 20)
    params = SamplingParams(temperature=0.0, max_tokens=tokens, ignore_eos=True)
    llm.generate(PROMPT, SamplingParams(temperature=0.0, max_tokens=4))  # warm-up
    results = {}
    for n in seqs:
        t0 = time.perf_counter()
        outs = llm.generate([PROMPT] * n, params)
        elapsed = time.perf_counter() - t0
        assert all(len(o.outputs[0].token_ids) == tokens for o in outs)
        results[n] = n * tokens / elapsed
    return results


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seqs", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--tokens", type=int, default=200)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    path = find_packaged_model("smollm2")
    rows = {
        "HF transformers generate (fp32)": bench_hf(path, args.seqs, args.tokens),
        "Heron (fp32, exact)": bench_heron(path, args.seqs, args.tokens, None),
        "Heron (int8 linears)": bench_heron(path, args.seqs, args.tokens, "int8"),
    }
    hf = rows["HF transformers generate (fp32)"]
    print(f"\nSmolLM2-135M Q4_1 GGUF, prompt {PROMPT!r}, {args.tokens} output tokens per sequence")
    head = " | ".join(f"{n} seqs" for n in args.seqs)
    print(f"| engine | {head} |")
    print("|---|" + "---|" * len(args.seqs))
    for name, res in rows.items():
        cells = []
        for n in args.seqs:
            gflops = res[n] * FLOP_PER_TOKEN / 1e9
            cells.append(
                f"{res[n]:.1f} tok/s ({res[n] / hf[n]:.2f}x HF, {gflops:.1f} GFLOP/s = "
                f"{100 * gflops / PEAK_GFLOPS:.0f}% of peak)"
            )
        print(f"| {name} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
