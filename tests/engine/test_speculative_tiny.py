"""Speculative verification on tiny random models, with proposers that force rejections:
greedy output never depends on the drafts (every family), and sampled tokens keep the
non-speculative distribution (a chi-square test over many seeds)."""

from __future__ import annotations

import random
from collections.abc import Sequence
from pathlib import Path

import pytest
from scipy.stats import chi2_contingency

from heron import LLM, SamplingParams
from heron.proposer import adaptive
from heron.proposer.base import SpeculativeConfig
from heron.proposer.speculator import Speculator
from heron.request import Request
from tests.models.tiny import build

K = 3
PROMPTS = [[72, 101, 108, 108, 111, 32, 119], [97, 98, 99, 97, 98, 99, 97, 98], [5, 6, 7]]


class OracleProposer:
    """Proposes the plain run's continuation, with each token replaced by a random one with
    probability ``noise``: accepted runs, rejections and block boundaries all happen."""

    def __init__(self, reference: dict[tuple[int, ...], list[int]], noise: float) -> None:
        self.reference = reference
        self.noise = noise
        self.rng = random.Random(0)

    def propose(self, requests: Sequence[Request], max_k: Sequence[int]) -> list[list[int]]:
        out = []
        for r, k in zip(requests, max_k, strict=True):
            ref = self.reference.get(tuple(r.prompt_token_ids), [])
            n = r.num_output_tokens
            drafts = ref[n : n + k] if ref[:n] == r.output_token_ids else []
            out.append(
                [self.rng.randrange(256) if self.rng.random() < self.noise else t for t in drafts]
            )
        return out

    def on_finished(self, request: Request) -> None:
        pass


class RandomProposer:
    """Proposes tokens drawn from ``choices``."""

    def __init__(self, choices: list[int]) -> None:
        self.choices = choices
        self.rng = random.Random(1)

    def propose(self, requests: Sequence[Request], max_k: Sequence[int]) -> list[list[int]]:
        return [[self.rng.choice(self.choices) for _ in range(k)] for k in max_k]

    def on_finished(self, request: Request) -> None:
        pass


@pytest.fixture
def always_speculate(monkeypatch: pytest.MonkeyPatch) -> None:
    """The adaptive rule would back off from drafts this bad; these tests want them all."""
    monkeypatch.setattr(adaptive, "MAX_DECODING", 1 << 20)
    monkeypatch.setattr(adaptive, "STEP_DRAFT_BUDGET", 1 << 20)
    monkeypatch.setattr(adaptive, "VERIFY_ROW_COST", 0.0)


def with_proposer(llm: LLM, proposer: object) -> Speculator:
    config = SpeculativeConfig("ngram", K)
    speculator = Speculator(config, llm.engine.config, proposer=proposer)  # type: ignore[arg-type]
    llm.engine.core.speculator = speculator
    return speculator


def ids(outs: list) -> list[list[int]]:  # type: ignore[type-arg]
    return [o.outputs[0].token_ids for o in outs]


FAMILIES = [
    "llama3",
    pytest.param("mistral", marks=pytest.mark.slow),
    pytest.param("qwen2", marks=pytest.mark.slow),
    pytest.param("qwen2-swa", marks=pytest.mark.slow),
    pytest.param("qwen3", marks=pytest.mark.slow),
    pytest.param("phi3", marks=pytest.mark.slow),
    pytest.param("phi3-swa", marks=pytest.mark.slow),
    pytest.param("gemma3", marks=pytest.mark.slow),
]


def build_family(kind: str, directory: Path) -> str:
    if kind == "gemma3":  # softcapped, with sliding layers
        from tests.models.test_gemma3_tiny import build_gemma3

        return str(build_gemma3(directory, attn_softcap=50.0, final_softcap=30.0))
    return str(build(kind, directory))


@pytest.mark.usefixtures("always_speculate")
@pytest.mark.parametrize("kind", FAMILIES)
def test_greedy_output_does_not_depend_on_the_drafts(kind: str, tmp_path: Path) -> None:
    path = build_family(kind, tmp_path / kind)
    params = SamplingParams(temperature=0.0, max_tokens=40, ignore_eos=True)
    plain = LLM(path, block_size=4, num_kv_blocks=256)
    want = ids(plain.generate([{"prompt_token_ids": p} for p in PROMPTS], params))
    spec = LLM(path, block_size=4, num_kv_blocks=256, speculative_config={"method": "ngram"})
    reference = {tuple(p): w for p, w in zip(PROMPTS, want, strict=True)}
    speculator = with_proposer(spec, OracleProposer(reference, noise=0.25))
    got = ids(spec.generate([{"prompt_token_ids": p} for p in PROMPTS], params))
    assert got == want
    c = speculator.counters
    assert 0 < c.num_accepted_tokens < c.num_draft_tokens
    assert c.accepted_per_pos[K - 1] > 0  # whole runs were accepted too


def test_sampled_tokens_keep_their_distribution(tmp_path: Path, always_speculate: None) -> None:
    """Two-sample chi-square on the joint of the 2nd and 3rd sampled tokens: 600 seeds with
    speculation (random drafts among the likely tokens) against 600 without."""
    path = str(build("llama3", tmp_path / "llama3"))
    prompt = {"prompt_token_ids": PROMPTS[0]}
    plain = LLM(path)
    probe = SamplingParams(temperature=0.0, max_tokens=1, logprobs=4)
    top = plain.generate(prompt, probe)[0].outputs[0].logprobs
    assert top is not None
    likely = list(top[0])
    spec = LLM(path, speculative_config={"method": "ngram"})
    speculator = with_proposer(spec, RandomProposer(likely))
    n = 600

    def joint(llm: LLM) -> list[tuple[int, ...]]:
        params = [
            SamplingParams(temperature=1.0, top_k=4, max_tokens=3, seed=s, ignore_eos=True)
            for s in range(n)
        ]
        # the first token comes from the prefill; the next two from a verified step (one
        # draft: accepted plus a bonus token, or a residual draw and then a plain step)
        return [tuple(t[1:]) for t in ids(llm.generate([prompt] * n, params))]

    want, got = joint(plain), joint(spec)
    c = speculator.counters
    assert 0 < c.num_accepted_tokens < c.num_draft_tokens
    cells = sorted(set(want) | set(got))
    table = [[want.count(x) for x in cells], [got.count(x) for x in cells]]
    assert chi2_contingency(table).pvalue > 1e-3
