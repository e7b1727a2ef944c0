"""What the draft-length rule gains on the speculation workloads, against an oracle, by the
cost of a verified row: a replay of the plain engine's greedy answers, no timing.

    .venv/bin/python -m benchmarks.spec_sim [--costs 0.27,0.2,0.15] [--caps 4,8]

Greedy output does not depend on speculation (verification is exact), so once the plain
engine's answers to ``benchmarks.spec_prompts`` are known (SmolLM2-135M from the store, the
workloads in ``benchmarks.speculative``'s order, one engine) every decode step of a
speculating engine is determined: at output position i the ``ngram`` proposer's drafts
(``heron.proposer.ngram.lookup`` over the prompt and the first i output tokens) are accepted
up to their first disagreement with the answer. The replay runs two choosers of k:

- ``rule``: the engine's adaptive rule (``heron.proposer.adaptive``, one user) with its own
  row cost set to c, as the engine core calls it (``heron.proposer.speculator``);
- ``oracle``: drafts exactly the tokens that will be accepted, up to the cap (no rule can do
  better with this proposer).

A step verifying k drafts is charged ``1 + c * k`` one-row steps; the speedup is the decode
tokens (after each request's first) over the charged steps, summed over a workload. c is
what one more row costs as a fraction of a one-row step (``VERIFY_ROW_COST``); measure it
on a machine with ``benchmarks.kernels`` or a step profile. The engine and the server have
per-step and per-token costs of their own, and the measured ratios differ from the replay's
(on the sixth run in ``docs/benchmarks.md``, lower): it bounds the rule, it does not forecast
the benchmark.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import numpy as np

from benchmarks.speculative import ONE_USER
from heron.proposer import adaptive
from heron.proposer.base import SpeculativeConfig
from heron.proposer.ngram import lookup
from heron.request import Request
from heron.sampling_params import SamplingParams

WORKLOADS = ONE_USER  # the one-user workloads of benchmarks.speculative, in its order
_NGRAM = SpeculativeConfig("ngram")  # the proposer's defaults
MIN_N, MAX_N = _NGRAM.prompt_lookup_min, _NGRAM.prompt_lookup_max


@dataclass(slots=True)
class Replay:
    """One chooser on one workload, summed over its requests."""

    tokens: int = 0  # decode tokens: after each request's first
    cost: float = 0.0  # in one-row steps
    drafts: int = 0
    accepted: int = 0

    @property
    def speedup(self) -> float:
        return self.tokens / self.cost if self.cost else 0.0


def accepted_run(drafts: list[int], answer: list[int], i: int) -> int:
    """How many of ``drafts`` match ``answer`` from position ``i`` on. Pure."""
    n = 0
    while n < len(drafts) and i + n < len(answer) and drafts[n] == answer[i + n]:
        n += 1
    return n


def replay(prompt: list[int], answer: list[int], cap: int, c: float, oracle: bool) -> Replay:
    """Decode ``answer`` again step by step with the ``ngram`` drafts (see module
    docstring). Reads ``adaptive.VERIFY_ROW_COST`` (set by the caller to c)."""
    req = Request("replay", list(prompt), SamplingParams(temperature=0), max_tokens=len(answer))
    out = Replay(tokens=len(answer) - 1)
    i = 1  # the first token comes from the prefill
    while i < len(answer):
        req.output_token_ids = answer[:i]
        context = np.asarray(prompt + answer[:i], dtype=np.int64)
        drafts: list[int] = []
        if oracle:
            room = min(cap, len(answer) - i - 1)
            guess = lookup(context, MIN_N, MAX_N, room)
            drafts = guess[: accepted_run(guess, answer, i)]
        else:
            k = adaptive.choose_k(req, adaptive.step_cap(cap, 1), 1)
            if k > 0:
                drafts = lookup(context, MIN_N, MAX_N, k)
                if not drafts:
                    adaptive.proposed_nothing(req, 1)
        n = accepted_run(drafts, answer, i)
        if drafts and not oracle:
            adaptive.record(req, len(drafts), n, 1)
        out.cost += 1 + c * len(drafts)
        out.drafts += len(drafts)
        out.accepted += n
        i += n + 1
    return out


def answers() -> dict[str, list[tuple[list[int], list[int]]]]:
    """(prompt, greedy answer) per request of each workload, from one plain engine."""
    from heron import LLM
    from heron.packaged import find_packaged_model
    from heron.prompt.renderer import ChatRenderer

    llm = LLM(find_packaged_model(), quantization="auto")
    renderer = ChatRenderer(llm.engine.tokenizer)
    found: dict[str, list[tuple[list[int], list[int]]]] = {}
    for name, (build, max_tokens) in WORKLOADS.items():
        found[name] = []
        for messages in build():
            ids = renderer.encode(messages, add_generation_prompt=True)
            params = SamplingParams(temperature=0, max_tokens=max_tokens)
            answer = llm.generate({"prompt_token_ids": ids}, params)[0].outputs[0].token_ids
            found[name].append((list(ids), list(answer)))
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--costs", default="0.27,0.2,0.15", help="row costs c to replay")
    parser.add_argument("--caps", default="4,8", help="draft caps to replay")
    args = parser.parse_args()
    costs = [float(c) for c in args.costs.split(",")]
    caps = [int(k) for k in args.caps.split(",")]
    found = answers()
    print("| c | cap | chooser | " + " | ".join(WORKLOADS) + " |")
    print("|---|---|---|" + "---|" * len(WORKLOADS))
    rule_cost = adaptive.VERIFY_ROW_COST
    try:
        for c in costs:
            adaptive.VERIFY_ROW_COST = c
            for cap in caps:
                for oracle in (False, True):
                    cells = []
                    for name in WORKLOADS:
                        total = Replay()
                        for prompt, answer in found[name]:
                            r = replay(prompt, answer, cap, c, oracle)
                            total.tokens += r.tokens
                            total.cost += r.cost
                            total.drafts += r.drafts
                            total.accepted += r.accepted
                        cells.append(f"{total.speedup:.2f}x ({total.accepted}/{total.drafts})")
                    chooser = "oracle" if oracle else "rule"
                    print(f"| {c} | {cap} | {chooser} | " + " | ".join(cells) + " |")
    finally:
        adaptive.VERIFY_ROW_COST = rule_cost


if __name__ == "__main__":
    main()
