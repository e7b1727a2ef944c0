"""Sampler: each parameter's effect, seeds, and logprobs, on hand-made logits."""

from __future__ import annotations

import pytest
import torch

from heron.request import Request
from heron.runner.sampler import Sampler
from heron.sampling_params import SamplingParams

V = 8


def request(rid: str = "r", output: list[int] | None = None, **kw: object) -> Request:
    r = Request(rid, [0, 1], SamplingParams(**kw), eos_token_ids=frozenset({7}))  # type: ignore[arg-type]
    for t in output or []:
        r.append_output_token(t)
    return r


def run(reqs: list[Request], logits: torch.Tensor, seed: int = 0) -> list[int]:
    s = Sampler(V)
    s.seed(seed)
    return s.sample(logits, s.prepare(reqs)).token_ids


def logits_row(*vals: float) -> torch.Tensor:
    return torch.tensor([list(vals)], dtype=torch.float32)


def test_greedy_is_argmax() -> None:
    logits = torch.randn(3, V)
    assert run([request(temperature=0.0) for _ in range(3)], logits) == logits.argmax(-1).tolist()


def test_top_k_1_equals_greedy() -> None:
    logits = torch.randn(4, V)
    reqs = [request(temperature=1.5, top_k=1) for _ in range(4)]
    assert run(reqs, logits, seed=3) == logits.argmax(-1).tolist()


def test_top_p_keeps_only_the_nucleus() -> None:
    # probabilities ~ [0.5, 0.3, 0.2 spread...]; top_p=0.6 keeps the two most likely tokens
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.05, 0.05, 0.05, 0.05, 0.0, 0.0]]) + 1e-9)
    seen = {run([request(temperature=1.0, top_p=0.6)], logits, seed=s)[0] for s in range(200)}
    assert seen == {0, 1}


def test_min_p_drops_unlikely_tokens() -> None:
    logits = torch.log(torch.tensor([[0.6, 0.3, 0.04, 0.03, 0.03, 0.0, 0.0, 0.0]]) + 1e-9)
    seen = {run([request(temperature=1.0, min_p=0.2)], logits, seed=s)[0] for s in range(200)}
    assert seen == {0, 1}


def test_sampling_follows_distribution() -> None:
    logits = torch.log(torch.tensor([[0.7, 0.3] + [1e-9] * (V - 2)]))
    draws = [run([request(temperature=1.0)], logits, seed=s)[0] for s in range(400)]
    frac = draws.count(0) / len(draws)
    assert 0.6 < frac < 0.8


def test_repetition_presence_frequency_penalties() -> None:
    # the prompt is [0, 1]; token 2 is the runner-up and appears nowhere
    base = logits_row(2.0, 0.0, 1.9, 1.0, 0.0, 0.0, 0.0, 0.0)
    # token 0 is in the prompt: a repetition penalty of 2 halves its positive logit
    assert run([request(temperature=0.0, repetition_penalty=2.0)], base) == [2]
    assert run([request(temperature=0.0, repetition_penalty=1.01)], base) == [0]
    # token 0 generated twice: frequency 0.1*2 pushes it below token 2
    assert run([request(temperature=0.0, frequency_penalty=0.1, output=[0, 0])], base) == [2]
    assert run([request(temperature=0.0, frequency_penalty=0.01, output=[0, 0])], base) == [0]
    assert run([request(temperature=0.0, presence_penalty=0.2, output=[0])], base) == [2]
    # presence/frequency apply to generated tokens only, not the prompt
    assert run([request(temperature=0.0, presence_penalty=0.2)], base) == [0]
    # penalties on one row leave another row alone
    two = torch.cat([base, base])
    reqs = [
        request("a", temperature=0.0, presence_penalty=0.2, output=[0]),
        request("b", temperature=0.0),
    ]
    assert run(reqs, two) == [2, 0]


def test_min_tokens_suppresses_eos_and_stop_ids() -> None:
    logits = logits_row(0, 0, 0, 0, 0, 3.0, 1.0, 5.0)  # eos (7) then stop id 5 are best
    assert run(
        [request(temperature=0.0, min_tokens=2, max_tokens=4, stop_token_ids=[5])], logits
    ) == [6]
    assert run([request(temperature=0.0, min_tokens=1, max_tokens=4, output=[1])], logits) == [7]


def test_seed_reproducible_whatever_the_batch() -> None:
    torch.manual_seed(0)
    row = torch.randn(1, V)
    alone = [run([request(temperature=1.0, seed=42)], row, seed=s)[0] for s in range(5)]
    assert len(set(alone)) == 1  # the engine seed does not matter to a seeded row
    other = torch.randn(5, V)
    batch = torch.cat([other[:2], row, other[2:]])
    reqs = [request(str(i), temperature=1.0) for i in range(5)]
    reqs.insert(2, request("s", temperature=1.0, seed=42))
    assert run(reqs, batch, seed=9)[2] == alone[0]


def test_seeded_sequence_differs_by_seed() -> None:
    row = torch.zeros(1, V)  # uniform: different seeds should give different draws
    firsts = {run([request(temperature=1.0, seed=s)], row)[0] for s in range(20)}
    assert len(firsts) > 3


def test_logprobs_top_and_rank() -> None:
    s = Sampler(V)
    logits = logits_row(3.0, 1.0, 2.0, 0.0, 0.0, 0.0, 0.0, 0.0)
    out = s.sample(logits, s.prepare([request(temperature=0.0, logprobs=2)]))
    chosen, rank, top_ids, top_vals = out.logprobs[0]  # type: ignore[misc]
    ref = torch.log_softmax(logits, -1)[0]
    assert out.token_ids == [0] and rank == 1
    assert top_ids == [0, 2]
    assert abs(chosen - ref[0].item()) < 1e-6 and abs(top_vals[1] - ref[2].item()) < 1e-6
    # the rank of a sampled token: its position when the vocabulary is sorted by logit
    s2 = Sampler(V)
    for seed in range(20):
        s2.seed(seed)
        out = s2.sample(logits, s2.prepare([request(temperature=5.0, logprobs=0)]))
        order = [0, 2, 1]  # logits 3.0, 2.0, 1.0, then the zeros tie for rank 4
        tok = out.token_ids[0]
        lp = out.logprobs[0]
        assert lp is not None
        assert lp[1] == (order.index(tok) + 1 if tok in order else 4)


def test_top_k_larger_than_vocab_is_clamped_and_absurd_values_rejected() -> None:
    import pytest

    logits = torch.randn(1, V)
    assert 0 <= run([request(temperature=1.0, top_k=10**6)], logits)[0] < V
    with pytest.raises(ValueError, match="top_k"):
        SamplingParams(top_k=2**70)


def test_logit_bias_per_row() -> None:
    logits = torch.tensor([[3.0, 2.0, 1.0, 0, 0, 0, 0, 0]] * 3)
    reqs = [
        request("a", temperature=0.0, logit_bias={0: -100.0}),  # bans the argmax
        request("b", temperature=0.0, logit_bias={5: 4.0}),  # lifts token 5 above it
        request("c", temperature=0.0),  # untouched
    ]
    assert run(reqs, logits) == [1, 5, 0]


def test_logit_bias_validation() -> None:
    for bad in ({-1: 1.0}, {1: 101.0}, {1: "x"}, {True: 1.0}, dict.fromkeys(range(1025), 1.0)):
        with pytest.raises(ValueError, match="logit_bias"):
            SamplingParams(logit_bias=bad)  # type: ignore[arg-type]
