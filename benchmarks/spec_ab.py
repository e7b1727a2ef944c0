"""Two engine configurations on one speculation workload, in one process, taking turns.

    .venv/bin/python -m benchmarks.spec_ab edit \\
        '{"speculative_config": {"method": "suffix", "num_speculative_tokens": 4}}' \\
        '{"speculative_config": {"method": "suffix", "num_speculative_tokens": 8}}'

Both ``LLM``s (SmolLM2-135M from the store, ``quantization="auto"``) live in one process and
decode each prompt of the workload (``benchmarks.spec_prompts``, as in
``benchmarks.speculative``) in turn, the order swapping from prompt to prompt, so a noisy
machine slows both alike. Each prompt is first run for one token on each engine, so the timed
runs find their prompt in the prefix cache and time decoding. Greedy. Prints each
configuration's tok/s and the ratio B/A; an A/A run (the same configuration twice) shows the
noise floor of the method. Every round starts fresh engines, so ``suffix`` never copies an
answer it gave in an earlier round.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from benchmarks.speculative import ONE_USER

WORKLOADS = ONE_USER  # benchmarks.speculative's one-user workloads


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("workload", choices=sorted(WORKLOADS))
    parser.add_argument("config_a", help="LLM keyword arguments as JSON")
    parser.add_argument("config_b", help="LLM keyword arguments as JSON")
    parser.add_argument("--rounds", type=int, default=1)
    args = parser.parse_args()
    from heron import LLM, SamplingParams
    from heron.packaged import find_packaged_model
    from heron.prompt.renderer import ChatRenderer

    configs: list[dict[str, Any]] = [json.loads(args.config_a), json.loads(args.config_b)]
    build, max_tokens = WORKLOADS[args.workload]
    tokens, seconds = [0, 0], [0.0, 0.0]
    for r in range(args.rounds):
        # Fresh engines every round: a round sends the same prompts again, and ``suffix``
        # would copy its own answers from the round before.
        llms = [LLM(find_packaged_model(), quantization="auto", **c) for c in configs]
        renderer = ChatRenderer(llms[0].engine.tokenizer)
        prompts = [renderer.encode(m, add_generation_prompt=True) for m in build()]
        for j, ids in enumerate(prompts):
            for i in (0, 1) if (r + j) % 2 == 0 else (1, 0):
                llms[i].generate(
                    {"prompt_token_ids": ids}, SamplingParams(temperature=0, max_tokens=1)
                )
                t0 = time.perf_counter()
                out = llms[i].generate(
                    {"prompt_token_ids": ids},
                    SamplingParams(temperature=0, max_tokens=max_tokens),
                )[0]
                seconds[i] += time.perf_counter() - t0
                tokens[i] += len(out.outputs[0].token_ids)
        for llm in llms:
            llm.close()
    rates = [tokens[i] / seconds[i] for i in (0, 1)]
    for i, name in enumerate("AB"):
        print(f"{name} {json.dumps(configs[i])}: {tokens[i]} tokens, {rates[i]:.1f} tok/s")
    print(f"B/A = {rates[1] / rates[0]:.3f}")


if __name__ == "__main__":
    main()
