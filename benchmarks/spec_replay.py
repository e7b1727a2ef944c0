"""Replay the adaptive speculation rule on recorded greedy outputs, without the model.

    .venv/bin/python -m benchmarks.spec_replay [--workloads open_chat,copy_edit,...]

Generates each one-user workload of ``benchmarks.spec_prompts`` once with the plain engine
(greedy, the max_tokens of ``benchmarks.speculative``), then replays every proposer with
``heron/proposer/adaptive.py`` as the engine core runs them at one user: per decode step the
rule picks k, the proposer drafts from the prompt and output so far, a draft is accepted
while it equals the next output token (greedy verification), the rule records the step, and
finished outputs reach the proposer as in the engine (after the benchmark's 8-token warm-up
request). It counts steps, verified draft rows and accepted drafts, which replay the engine's
counts exactly, and reports tokens / (steps + c x draft rows) for a few verified-row costs
``c``: what the rule's choices are worth at each cost, free of the machine's timing noise.
"""

from __future__ import annotations

import argparse

from benchmarks import spec_prompts, speculative
from heron import LLM, SamplingParams
from heron.config import EngineConfig
from heron.prompt.renderer import ChatRenderer
from heron.proposer import adaptive
from heron.proposer.base import Proposer, SpeculativeConfig
from heron.proposer.ngram import NgramProposer
from heron.proposer.suffix import SuffixProposer
from heron.request import Request
from heron.sampling_params import SamplingParams as Params

COSTS = (0.5, 0.6, 0.75, 0.9)
Recorded = list[tuple[list[int], list[int]]]  # (prompt ids, greedy output ids) per request


def record(llm: LLM, workload: str, max_tokens: int) -> Recorded:
    renderer = ChatRenderer(llm.engine.tokenizer)
    out: Recorded = []
    for conversation in getattr(spec_prompts, workload)():
        ids = renderer.encode(conversation, add_generation_prompt=True)
        params = SamplingParams(temperature=0.0, max_tokens=max_tokens)
        result = llm.generate({"prompt_token_ids": ids}, params)[0]
        out.append((ids, list(result.outputs[0].token_ids)))
    return out


def replay(proposer: Proposer, requests: Recorded, max_tokens: int) -> tuple[int, int, int, int]:
    """(tokens, steps, draft rows, accepted drafts) of one user running ``requests`` in turn."""
    warm = Request("warm", requests[0][0], Params(max_tokens=8), max_tokens=8)
    for token in requests[0][1][:8]:
        warm.append_output_token(token)
    proposer.on_finished(warm)
    steps = rows = accepted = 0
    for i, (prompt, output) in enumerate(requests):
        req = Request(str(i), prompt, Params(max_tokens=max_tokens), max_tokens=max_tokens)
        req.append_output_token(output[0])  # the prefill step
        steps += 1
        while req.num_output_tokens < len(output):
            truth = output[req.num_output_tokens :]
            k = adaptive.choose_k(req, adaptive.step_cap(4, 1), 1)
            drafts = proposer.propose([req], [k])[0][:k] if k else []
            if k and not drafts:
                adaptive.proposed_nothing(req, 1)
            n = 0
            while n < len(drafts) and n < len(truth) - 1 and drafts[n] == truth[n]:
                n += 1
            for token in truth[: n + 1]:
                req.append_output_token(token)
            if drafts:
                adaptive.record(req, len(drafts), n, 1)
                rows += len(drafts)
                accepted += n
            steps += 1
        proposer.on_finished(req)
    return sum(len(o) for _, o in requests), steps, rows, accepted


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workloads", default="open_chat,copy_edit,multi_turn,quote_summary")
    args = parser.parse_args()
    names = {"open_chat": "chat", "copy_edit": "edit", "multi_turn": "turns"}
    names["quote_summary"] = "quote"
    llm = LLM("smollm2", quantization="auto")
    print(
        "| workload | proposer | steps | draft rows | accepted | "
        + " | ".join(f"c={c}" for c in COSTS)
        + " |"
    )
    print("|---|---|---|---|---|" + "---|" * len(COSTS))
    for workload in args.workloads.split(","):
        max_tokens = speculative.ONE_USER[names[workload]][1]
        requests = record(llm, workload, max_tokens)
        for method in ("ngram", "suffix"):
            config = SpeculativeConfig(method)
            proposer: Proposer = (
                SuffixProposer(config)
                if method == "suffix"
                else NgramProposer(config, EngineConfig())
            )
            tokens, steps, rows, accepted = replay(proposer, requests, max_tokens)
            gains = " | ".join(f"{tokens / (steps + c * rows):.3f}x" for c in COSTS)
            print(f"| {workload} | {method} | {steps} | {rows} | {accepted} | {gains} |")


if __name__ == "__main__":
    main()
