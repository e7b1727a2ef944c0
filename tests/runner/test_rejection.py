"""The rejection sampler on hand-made logits: greedy verification is exactly one-at-a-time
greedy decoding, and random verification leaves each token's distribution unchanged."""

from __future__ import annotations

import random

import pytest
import torch
from scipy.stats import chisquare

from heron.request import Request
from heron.runner.rejection import RejectionSampler
from heron.runner.sampler import Sampler
from heron.sampling_params import SamplingParams
from heron.scheduler.output import ScheduledRequest

V = 6


def request(output: list[int] | None = None, rid: str = "r", **kw: object) -> Request:
    r = Request(rid, [0, 1], SamplingParams(**kw), eos_token_ids=frozenset({5}))  # type: ignore[arg-type]
    for t in output or []:
        r.append_output_token(t)
    return r


def row(req: Request, drafts: list[int]) -> ScheduledRequest:
    n = len(drafts) + 1
    return ScheduledRequest(req, req.num_tokens - 1, n, [0], True, list(drafts))


def verify(rows: list[ScheduledRequest], logits: torch.Tensor, seed: int = 0) -> list[list[int]]:
    sampler = Sampler(V)
    sampler.seed(seed)
    rs = RejectionSampler(sampler)
    out = rs.sample(logits, rows, rs.prepare(rows))
    assert out.runs is not None
    assert out.token_ids == [run[-1] for run in out.runs]
    return out.runs


def sequential_greedy(req: Request, logits: torch.Tensor, drafts: list[int]) -> list[int]:
    """What one-at-a-time decoding emits, feeding each emitted token back, while it agrees."""
    sampler = Sampler(V)
    out: list[int] = []
    for j in range(len(drafts) + 1):
        probe = request(req.output_token_ids + out, **_params(req))
        token = sampler.sample(logits[j : j + 1], sampler.prepare([probe])).token_ids[0]
        out.append(token)
        if j == len(drafts) or token != drafts[j]:
            break
    return out


def _params(req: Request) -> dict[str, object]:
    p = req.sampling_params
    return {
        "temperature": p.temperature,
        "repetition_penalty": p.repetition_penalty,
        "presence_penalty": p.presence_penalty,
        "frequency_penalty": p.frequency_penalty,
        "min_tokens": p.min_tokens,
        "logit_bias": p.logit_bias,
    }


def test_greedy_accepts_the_agreeing_prefix_then_the_argmax() -> None:
    logits = torch.full((4, V), -1.0)
    for j, best in enumerate([2, 3, 1, 4]):
        logits[j, best] = 5.0
    req = request(temperature=0.0)
    assert verify([row(req, [2, 3, 1])], logits) == [[2, 3, 1, 4]]  # all accepted + bonus
    assert verify([row(req, [2, 0, 1])], logits) == [[2, 3]]  # second rejected
    assert verify([row(req, [0, 3, 1])], logits) == [[2]]
    assert verify([row(req, [])], logits[:1]) == [[2]]


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 0.0},
        {"temperature": 0.0, "repetition_penalty": 3.0},
        {"temperature": 0.0, "frequency_penalty": 2.0, "presence_penalty": 1.0},
        {"temperature": 0.0, "min_tokens": 4},
        {"temperature": 0.0, "logit_bias": {1: 1.5}},
    ],
)
def test_greedy_matches_one_at_a_time_decoding(params: dict[str, object]) -> None:
    gen = torch.Generator().manual_seed(1)
    rnd = random.Random(1)
    for _ in range(50):
        req = request([rnd.randrange(V) for _ in range(rnd.randrange(3))], **params)
        k = rnd.randrange(5)
        logits = torch.randn(k + 1, V, generator=gen) * 2
        # drafts mostly the plain argmax, so that penalties decide some of them
        drafts = [
            int(logits[j].argmax()) if rnd.random() < 0.7 else rnd.randrange(V) for j in range(k)
        ]
        assert verify([row(req, drafts)], logits) == [sequential_greedy(req, logits, drafts)]


def test_rows_of_a_batch_are_independent() -> None:
    logits = torch.randn(2 + 1 + 3, V)
    a, b, c = (
        request(rid="a", temperature=0.0),
        request(rid="b", temperature=0.0),
        request(rid="c", temperature=0.0),
    )
    da = [int(logits[0].argmax())]
    dc = [int(logits[3].argmax()), int(logits[4].argmax())]
    runs = verify([row(a, da), row(b, []), row(c, dc)], logits)
    assert runs == [
        da + [int(logits[1].argmax())],
        [int(logits[2].argmax())],
        dc + [int(logits[5].argmax())],
    ]


def test_logprobs_are_given_per_token_of_the_run() -> None:
    logits = torch.randn(3, V)
    drafts = [int(logits[0].argmax()), int(logits[1].argmax())]
    req = request(temperature=0.0, logprobs=2)
    rows = [row(req, drafts)]
    sampler = Sampler(V)
    rs = RejectionSampler(sampler)
    out = rs.sample(logits, rows, rs.prepare(rows))
    assert out.runs is not None and out.run_logprobs is not None
    raw = torch.log_softmax(logits, dim=-1)
    assert len(out.run_logprobs[0]) == 3
    for j, (lp, rank, top_ids, top_vals) in enumerate(out.run_logprobs[0]):
        token = out.runs[0][j]
        assert lp == pytest.approx(float(raw[j, token]))
        assert rank == 1 and top_ids[0] == token and len(top_vals) == 2


def _target(logits: torch.Tensor, req: Request, prefix: list[int]) -> torch.Tensor:
    """The distribution the plain sampler draws from at this position."""
    sampler = Sampler(V)
    probe = request(req.output_token_ids + prefix, **_params(req), top_k=req.sampling_params.top_k)
    batch = sampler.prepare([probe])
    p = sampler.probs(sampler.process(logits, batch), batch)[0]
    return p / p.sum()


@pytest.mark.parametrize(
    "params",
    [
        {"temperature": 1.0},
        {"temperature": 0.7, "top_k": 4},
        {"temperature": 1.0, "repetition_penalty": 2.0},
    ],
)
def test_random_verification_preserves_the_distribution(params: dict[str, object]) -> None:
    """Chi-square goodness of fit: the first token of a run is distributed as row 0's p,
    and the token after an accepted draft as row 1's p (with the draft as output)."""
    logits = torch.tensor([[1.0, 0.5, 0.0, -0.5, 0.2, -1.0], [0.3, 1.2, -0.2, 0.0, 0.8, -0.4]])
    draft = 1
    req = request(**params)
    p0, p1 = _target(logits[:1], req, []), _target(logits[1:], req, [draft])
    sampler = Sampler(V)
    sampler.seed(123)
    rs = RejectionSampler(sampler)
    trials = 6000  # one batch of independent rows (unseeded: the sampler's generator)
    rows = [row(request(**params), [draft]) for _ in range(trials)]
    out = rs.sample(logits.repeat(trials, 1), rows, rs.prepare(rows))
    assert out.runs is not None
    first = torch.zeros(V)
    second = torch.zeros(V)
    for run in out.runs:
        first[run[0]] += 1
        if run[0] == draft:
            assert len(run) == 2
            second[run[1]] += 1
        else:
            assert len(run) == 1  # a rejected draft ends the run
    for counts, p in ((first, p0), (second, p1)):
        support = p > 0
        assert counts[~support].sum() == 0
        observed = counts[support].double().numpy()
        target = p[support].double()
        expected = (target / target.sum()).numpy() * observed.sum()
        assert chisquare(observed, expected).pvalue > 1e-3


def test_seeded_requests_repeat() -> None:
    logits = torch.randn(3, V)
    runs = [verify([row(request(temperature=1.0, seed=7), [1, 2])], logits, seed=s) for s in (0, 1)]
    assert runs[0] == runs[1]
