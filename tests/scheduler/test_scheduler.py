"""Exact-state tests of the scheduler over the real KV cache manager (no model)."""

from __future__ import annotations

from heron.config import SchedulerConfig
from heron.kvcache import KVCacheManager
from heron.request import Request, RequestStatus
from heron.sampling_params import SamplingParams
from heron.scheduler import Scheduler, SchedulerOutput

BS = 4


def make(
    num_blocks: int = 16,
    budget: int = 64,
    max_seqs: int = 8,
    chunk: int = 0,
    caching: bool = True,
    policy: str = "fcfs",
) -> Scheduler:
    kv = KVCacheManager(num_blocks, BS, enable_caching=caching, hash_seed=b"test")
    cfg = SchedulerConfig(
        max_num_batched_tokens=budget,
        max_num_seqs=max_seqs,
        long_prefill_token_threshold=chunk,
        policy=policy,
    )
    return Scheduler(cfg, kv)


def req(
    rid: str,
    n: int,
    first: int = 0,
    max_tokens: int = 8,
    priority: int = 0,
    arrival: float = 0.0,
    **kw: object,
) -> Request:
    return Request(
        request_id=rid,
        prompt_token_ids=list(range(first, first + n)),
        sampling_params=SamplingParams(max_tokens=max_tokens, **kw),  # type: ignore[arg-type]
        eos_token_ids=frozenset({999}),
        max_tokens=max_tokens,
        priority=priority,
        arrival_time=arrival,
    )


def view(out: SchedulerOutput) -> list[tuple[str, int, int, list[int], bool]]:
    return [
        (s.request.request_id, s.num_computed_tokens, s.num_scheduled_tokens, s.block_ids, s.sample)
        for s in out.scheduled
    ]


def step(s: Scheduler, tokens: dict[str, int] | None = None) -> SchedulerOutput:
    out = s.schedule()
    sampled = {
        x.request.request_id: [(tokens or {}).get(x.request.request_id, 7)]
        for x in out.scheduled
        if x.sample
    }
    s.update_from_output(out, sampled)
    return out


def test_prefill_then_decode_exact_blocks() -> None:
    s = make()
    s.add_request(req("a", 6))
    s.add_request(req("b", 3, first=100))
    out = step(s)
    assert view(out) == [("a", 0, 6, [0, 1], True), ("b", 0, 3, [2], True)]
    out = step(s)
    # a: 7 tokens -> still 2 blocks; b: 4 tokens -> still 1 block
    assert view(out) == [("a", 6, 1, [0, 1], True), ("b", 3, 1, [2], True)]
    out = step(s)
    # b's 5th token needs a new block: the next free one (3)
    assert view(out) == [("a", 7, 1, [0, 1], True), ("b", 4, 1, [2, 3], True)]


def test_token_budget_and_chunked_prefill() -> None:
    s = make(budget=8, chunk=4)
    s.add_request(req("a", 10))
    s.add_request(req("b", 3, first=50))
    assert view(step(s)) == [("a", 0, 4, [0], False), ("b", 0, 3, [1], True)]
    # a continues its prefill in 4-token chunks while b decodes alongside
    assert view(step(s)) == [("a", 4, 4, [0, 2], False), ("b", 3, 1, [1], True)]
    assert view(step(s)) == [("a", 8, 2, [0, 2, 3], True), ("b", 4, 1, [1, 4], True)]
    assert s.requests["a"].num_computed_tokens == 10
    assert s.requests["a"].output_token_ids == [7]


def test_new_request_joins_running_batch_next_step() -> None:
    s = make()
    s.add_request(req("a", 4))
    step(s)
    s.add_request(req("b", 2, first=40))
    assert view(step(s)) == [("a", 4, 1, [0, 1], True), ("b", 0, 2, [2], True)]


def test_max_num_seqs() -> None:
    s = make(max_seqs=2)
    for i, r in enumerate("abc"):
        s.add_request(req(r, 2, first=10 * i))
    assert [x[0] for x in view(step(s))] == ["a", "b"]
    assert s.num_waiting == 1


def test_prefix_hit_starts_computed() -> None:
    s = make()
    s.add_request(req("a", 9))  # blocks 0,1 full, 2 partial
    step(s)
    s.add_request(req("b", 9))
    out = step(s)
    # b reuses a's two full blocks (ids 0, 1); only its last token is computed
    assert view(out)[1] == ("b", 8, 1, [0, 1, 3], True)
    assert s.requests["b"].num_cached_tokens == 8


def test_preemption_by_recompute_fcfs() -> None:
    s = make(num_blocks=4, caching=False)
    s.add_request(req("a", 7, max_tokens=20))
    s.add_request(req("b", 7, first=50, max_tokens=20))
    assert view(step(s)) == [("a", 0, 7, [0, 1], True), ("b", 0, 7, [2, 3], True)]
    # a needs a 3rd block at 8 tokens... it has 8 tokens now (7 + 1 sampled): fits
    assert view(step(s)) == [("a", 7, 1, [0, 1], True), ("b", 7, 1, [2, 3], True)]
    # a's 9th token needs a block; none free: the newest request (b) is preempted
    out = step(s)
    assert out.preempted_ids == ["b"]
    assert view(out) == [("a", 8, 1, [0, 1, 3], True)]
    b = s.requests["b"]
    assert b.status == RequestStatus.PREEMPTED and b.num_computed_tokens == 0
    assert b.output_token_ids == [7, 7]
    assert s.waiting == [b]


def test_preempted_request_recomputes_prompt_and_outputs() -> None:
    s = make(num_blocks=4, caching=False)
    a = req("a", 7, max_tokens=3)
    s.add_request(a)
    s.add_request(req("b", 7, first=50, max_tokens=20))
    step(s)
    step(s)
    step(s)  # b preempted, a samples its 3rd and last token and finishes
    assert a.status == RequestStatus.FINISHED_LENGTH
    out = step(s)
    # b comes back with all 9 known tokens (7 prompt + 2 outputs) to recompute. Free queue:
    # b's preemption appended [3, 2], a took 3, a's finish appended [3, 1, 0] -> [2, 3, 1, 0]
    assert view(out) == [("b", 0, 9, [2, 3, 1], True)]


def test_priority_policy_preempts_lowest_priority() -> None:
    s = make(num_blocks=4, caching=False, policy="priority")
    s.add_request(req("low", 7, max_tokens=20, priority=5, arrival=0.0))
    s.add_request(req("high", 7, first=50, max_tokens=20, priority=0, arrival=1.0))
    out = step(s)
    assert [x[0] for x in view(out)] == ["high", "low"]
    step(s)
    out = step(s)
    assert out.preempted_ids == ["low"]


def test_abort_frees_blocks_immediately() -> None:
    s = make()
    s.add_request(req("a", 9))
    step(s)
    assert s.kv.num_free_blocks == 13
    s.finish_requests(["a"], RequestStatus.FINISHED_ABORTED)
    assert s.kv.num_free_blocks == 16
    assert not s.has_unfinished()


def test_stop_conditions() -> None:
    s = make()
    s.add_request(req("eos", 2, max_tokens=5))
    s.add_request(req("stopid", 2, first=10, max_tokens=5, stop_token_ids=[42]))
    s.add_request(req("ignore", 2, first=20, max_tokens=2, ignore_eos=True))
    s.add_request(req("minimum", 2, first=30, max_tokens=5, min_tokens=2))
    out = s.schedule()
    done = s.update_from_output(
        out, {"eos": [999], "stopid": [42], "ignore": [999], "minimum": [999]}
    )
    assert sorted(r.request_id for r in done) == ["eos", "stopid"]
    assert s.requests.get("eos") is None
    out = s.schedule()
    done = s.update_from_output(out, {"ignore": [999], "minimum": [999]})
    statuses = {r.request_id: r.status for r in done}
    assert statuses == {
        "ignore": RequestStatus.FINISHED_LENGTH,
        "minimum": RequestStatus.FINISHED_STOPPED,
    }


def test_fork_children_share_prompt_blocks() -> None:
    s = make()
    parent = req("p", 9, max_tokens=4)
    child = req("c", 9, max_tokens=4)
    child.fork_parent = parent
    s.add_request(parent)
    s.add_request(child)
    out = step(s)
    assert view(out) == [("p", 0, 9, [0, 1, 2], True)]  # the child waits for the prompt KV
    out = step(s)
    # the child shares p's two full blocks and recomputes only the partial tail
    assert view(out) == [("p", 9, 1, [0, 1, 2], True), ("c", 8, 1, [0, 1, 3], True)]
    assert s.kv.block_pool.blocks[0].ref_cnt == 2
