"""The runner's prompt-logprob plan: which flat rows score which prompt tokens, per chunk."""

from __future__ import annotations

import torch

from heron.request import Request
from heron.runner.prompt_logprobs import PromptLogprobsPlan
from heron.sampling_params import SamplingParams
from heron.scheduler.output import ScheduledRequest

PROMPT = [10, 11, 12, 13, 14, 15, 16]


def scheduled(req: Request, start: int, n: int) -> ScheduledRequest:
    return ScheduledRequest(req, start, n, [], start + n == req.num_tokens)


def test_chunks_score_up_to_the_next_chunks_first_token() -> None:
    req = Request("r", PROMPT, SamplingParams(prompt_logprobs=2))
    plan = PromptLogprobsPlan()
    plan.add(scheduled(req, 0, 4), first_row=3)  # positions 0..3 at flat rows 3..6
    assert plan.rows[0].tolist() == [3, 4, 5, 6]
    assert plan.targets[0].tolist() == [11, 12, 13, 14]  # position 3 scores token 4
    req.num_prompt_logprobs = 4
    plan = PromptLogprobsPlan()
    plan.add(scheduled(req, 4, 3), first_row=0)  # the last position predicts no prompt token
    assert plan.rows[0].tolist() == [0, 1]
    assert plan.targets[0].tolist() == [15, 16]
    assert plan.segments == [(req, 4, 2)] and plan.max_k == 2


def test_recompute_and_other_requests_plan_nothing() -> None:
    plain = Request("p", PROMPT, SamplingParams())
    done = Request("d", PROMPT, SamplingParams(prompt_logprobs=0))
    done.num_prompt_logprobs = len(PROMPT) - 1  # scored before a preemption
    plan = PromptLogprobsPlan()
    plan.add(scheduled(plain, 0, 7), first_row=0)
    plan.add(scheduled(done, 0, 7), first_row=7)
    assert not plan.segments and not done.needs_prompt_logprobs
    assert plan.score(torch.zeros(14, 4), lambda h: h) == []


def test_partly_scored_prompt_resumes_where_it_stopped() -> None:
    req = Request("r", PROMPT, SamplingParams(prompt_logprobs=1))
    req.num_prompt_logprobs = 2  # preempted after its first chunk; recomputed from 0
    plan = PromptLogprobsPlan()
    plan.add(scheduled(req, 0, 7), first_row=0)
    assert plan.rows[0].tolist() == [2, 3, 4, 5] and plan.targets[0].tolist() == [13, 14, 15, 16]


def test_scores_are_log_softmax_of_the_planned_rows() -> None:
    req = Request("r", [0, 2, 1], SamplingParams(prompt_logprobs=1))
    plan = PromptLogprobsPlan()
    plan.add(scheduled(req, 0, 3), first_row=1)
    hidden = torch.tensor([[9.0, 9.0, 9.0], [0.0, 1.0, 2.0], [3.0, 1.0, 0.0], [5.0, 5.0, 5.0]])
    ((got_req, chunk),) = plan.score(hidden, lambda h: h)
    assert got_req is req and chunk.start == 0
    want = torch.log_softmax(hidden[1:3], -1)
    assert torch.allclose(torch.tensor(chunk.logprobs), torch.stack([want[0, 2], want[1, 1]]))
    assert chunk.ranks == [1, 2] and chunk.top_ids == [[2], [0]]
