"""Speculative drafts in the scheduler, over the real KV cache manager, with exact block ids:
drafts are tokens to compute, accepted ones become output, rejected ones roll back, and no
rejected token ever enters the prefix cache."""

from __future__ import annotations

from heron.request import RequestStatus
from heron.scheduler import Scheduler, SchedulerOutput
from tests.scheduler.test_scheduler import make, req


def spec_view(out: SchedulerOutput) -> list[tuple[str, int, int, list[int], bool, list[int]]]:
    return [
        (
            s.request.request_id,
            s.num_computed_tokens,
            s.num_scheduled_tokens,
            s.block_ids,
            s.sample,
            s.spec_token_ids,
        )
        for s in out.scheduled
    ]


def prefilled(s: Scheduler, rid: str = "a", n: int = 6, **kw: object) -> None:
    """Prefill a request of prompt 0..n-1 and sample token 7."""
    s.add_request(req(rid, n, **kw))  # type: ignore[arg-type]
    out = s.schedule()
    s.update_from_output(out, {x.request.request_id: [7] for x in out.scheduled if x.sample})


def cached_tokens(s: Scheduler, block_id: int) -> tuple[int, ...] | None:
    block = s.kv.block_pool.blocks[block_id]
    if block.block_hash is None:
        return None
    assert block.content is not None
    return block.content.token_ids


def test_drafts_are_scheduled_after_the_known_token_with_lookahead_blocks() -> None:
    s = make()
    prefilled(s)  # tokens 0..5 7 (block size 4): blocks 0, 1
    a = s.requests["a"]
    a.spec_token_ids = [20, 21, 22]
    out = s.schedule()
    # positions 6..9: the known token 7 and three drafts; a third block covers 8..9
    assert spec_view(out) == [("a", 6, 4, [0, 1, 2], True, [20, 21, 22])]
    assert out.num_scheduled_tokens == 4
    # only block 0 is full of known tokens; block 1 would be full only with a draft
    assert cached_tokens(s, 0) == (0, 1, 2, 3)
    assert cached_tokens(s, 1) is None and cached_tokens(s, 2) is None


def test_accepted_drafts_advance_rejected_roll_back() -> None:
    s = make()
    prefilled(s)
    a = s.requests["a"]
    a.spec_token_ids = [20, 21, 22]
    out = s.schedule()
    # 20 accepted, 21 rejected: the runner's own token 99 follows 20
    assert s.update_from_output(out, {"a": [20, 99]}) == []
    assert a.output_token_ids == [7, 20, 99]
    assert a.num_computed_tokens == 8  # KV of 0..5, 7, 20; 99's is computed next step
    assert a.spec_token_ids == []
    out = s.schedule()
    assert spec_view(out) == [("a", 8, 1, [0, 1, 2], True, [])]
    # block 1 is now full of accepted tokens and cached as such
    assert cached_tokens(s, 1) == (4, 5, 7, 20)


def test_a_rejected_draft_never_enters_the_prefix_cache() -> None:
    s = make()
    prefilled(s)
    a = s.requests["a"]
    a.spec_token_ids = [20, 21, 22]  # 20 would complete block 1, 21 22 spill into block 2
    out = s.schedule()
    s.update_from_output(out, {"a": [50]})  # every draft rejected
    assert a.num_computed_tokens == 7
    assert cached_tokens(s, 1) is None
    a.spec_token_ids = [60, 61]
    out = s.schedule()
    assert spec_view(out) == [("a", 7, 3, [0, 1, 2], True, [60, 61])]
    # block 1 = 4 5 7 50, all accepted: registered; block 2 holds only drafts
    assert cached_tokens(s, 1) == (4, 5, 7, 50)
    assert cached_tokens(s, 2) is None
    s.update_from_output(out, {"a": [60, 61, 62]})  # both accepted
    s.finish_requests(["a"], RequestStatus.FINISHED_ABORTED)
    # a prompt continuing with the rejected draft hits block 0 only
    blocks, hit = s.kv.get_computed_blocks("x", [0, 1, 2, 3, 4, 5, 7, 20, 21, 22], 10)
    assert [b.block_id for b in blocks] == [0] and hit == 4
    # one continuing with what was accepted reuses blocks 0, 1 and the tail of block 2
    blocks, hit = s.kv.get_computed_blocks("y", [0, 1, 2, 3, 4, 5, 7, 50, 60, 61, 62, 9], 12)
    assert [b.block_id for b in blocks] == [0, 1, 2] and hit == 10


def test_tail_of_a_finished_request_holds_no_rejected_row() -> None:
    s = make()
    prefilled(s, n=5)  # tokens 0..4 7: block 1 holds 4 7
    a = s.requests["a"]
    a.spec_token_ids = [20, 21]
    out = s.schedule()
    s.update_from_output(out, {"a": [30]})  # rejected: block 1 has KV rows 4 7 20(rejected)
    s.finish_requests(["a"], RequestStatus.FINISHED_ABORTED)
    tail = s.kv.block_pool.blocks[1].tail
    assert tail is not None and tail.token_ids == (4, 7)  # 6 computed tokens: rows 4, 7


def test_drafts_are_cut_to_the_budget() -> None:
    s = make(budget=3)
    prefilled(s, n=2)
    s.requests["a"].spec_token_ids = [20, 21, 22, 23]
    out = s.schedule()
    assert spec_view(out) == [("a", 2, 3, [0, 1], True, [20, 21])]


def test_drafts_never_preempt_anyone() -> None:
    s = make(num_blocks=3, caching=False)
    prefilled(s, "a", n=4, max_tokens=20)  # a: 0..3 7 -> blocks 0, 1
    s.add_request(req("b", 3, first=50, max_tokens=20))
    out = s.schedule()
    s.update_from_output(out, {"a": [7], "b": [7]})  # a: blocks 0, 1; b: block 2
    s.requests["a"].spec_token_ids = [20, 21, 22, 23]  # would need a 3rd block for a
    out = s.schedule()
    assert out.preempted_ids == []
    assert [(x[0], x[2], x[5]) for x in spec_view(out)] == [("a", 1, []), ("b", 1, [])]


def test_drafts_wait_for_the_end_of_a_prefill() -> None:
    s = make(budget=4, chunk=4)
    s.add_request(req("a", 6))
    s.requests["a"].spec_token_ids = [20]
    out = s.schedule()
    assert spec_view(out) == [("a", 0, 4, [0], False, [])]


def test_stops_apply_token_by_token_inside_a_run() -> None:
    s = make()
    s.add_request(req("eos", 2))
    s.add_request(req("length", 2, first=10, max_tokens=3))
    s.add_request(req("minimum", 2, first=20, min_tokens=4))
    out = s.schedule()
    s.update_from_output(out, {rid: [7] for rid in s.requests})
    for r in s.requests.values():
        r.spec_token_ids = [5, 999, 6]
    out = s.schedule()
    runs = {"eos": [5, 999, 6], "length": [5, 6, 999, 8], "minimum": [5, 999, 6, 8]}
    done = s.update_from_output(out, runs)
    got = {r.request_id: (r.status, r.output_token_ids, r.num_computed_tokens) for r in done}
    assert got == {
        # tokens after the stop are dropped; every appended token is an accepted draft
        "eos": (RequestStatus.FINISHED_STOPPED, [7, 5, 999], 5),
        "length": (RequestStatus.FINISHED_LENGTH, [7, 5, 6], 5),
    }
    minimum = s.requests["minimum"]  # the EOS came before min_tokens: it is kept going
    assert minimum.output_token_ids == [7, 5, 999, 6, 8]
    assert minimum.num_computed_tokens == 6 and not minimum.is_finished


def test_blocks_filled_by_accepted_drafts_are_cached_when_the_request_ends() -> None:
    s = make()
    prefilled(s)
    a = s.requests["a"]
    a.spec_token_ids = [20, 21, 22]
    out = s.schedule()
    # every draft accepted, then EOS: 20 filled block 1 after this step's allocation
    assert s.update_from_output(out, {"a": [20, 21, 22, 999]}) == [a]
    assert a.output_token_ids == [7, 20, 21, 22, 999] and a.num_computed_tokens == 10
    assert cached_tokens(s, 1) == (4, 5, 7, 20)
    blocks, hit = s.kv.get_computed_blocks("b", [0, 1, 2, 3, 4, 5, 7, 20, 21, 22, 999, 1], 12)
    assert [b.block_id for b in blocks] == [0, 1, 2] and hit == 10  # block 2's tail: 21 22
