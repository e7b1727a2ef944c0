"""The data-parallel router's choices, exactly: prefix matches, load limits, ties, failures,
round-robin, and the bounded index."""

from __future__ import annotations

import pytest

from heron.engine.router import NoReplicaError, ReplicaLoad, Router
from heron.kvcache.block_hash import PROCESS_HASH_SEED, hash_block_tokens

IDLE = ReplicaLoad(True)


def load(in_flight: int = 0, waiting: int = 0, kv: float = 0.0) -> ReplicaLoad:
    return ReplicaLoad(True, in_flight, waiting, kv)


def test_prompt_blocks_are_hashed_as_the_kv_cache_hashes_them() -> None:
    router = Router(2, block_size=4)
    tokens = list(range(11))  # two full blocks and a partial tail, which has no hash
    first = hash_block_tokens(None, tokens[:4], None, PROCESS_HASH_SEED)
    second = hash_block_tokens(first, tokens[4:8], None, PROCESS_HASH_SEED)
    assert router.hash_prompt(tokens) == [first.digest, second.digest]
    # the adapter is part of the key, as in the cache
    assert router.hash_prompt(tokens, b"adapter")[0] != first.digest
    assert router.hash_prompt(tokens[:3]) == []


def test_longest_cached_prefix_wins() -> None:
    router = Router(3, block_size=4)
    a = router.hash_prompt(list(range(16)))  # 4 blocks
    router.record(0, a[:2])
    router.record(1, a[:3])
    assert router.matched_blocks(0, a) == 2 and router.matched_blocks(1, a) == 3
    assert router.choose(a, [IDLE, IDLE, IDLE]) == 1
    # a match must start at block 0: a later block alone is no prefix
    router.record(2, a[1:])
    assert router.matched_blocks(2, a) == 0


def test_a_hit_is_worth_a_little_load_but_not_more() -> None:
    router = Router(2, block_size=4, balance_slack=2)
    a = router.hash_prompt(list(range(8)))
    router.record(1, a)
    # the holder has two more requests than the idle replica: still within the slack
    assert router.choose(a, [load(), load(in_flight=2)]) == 1
    # three more: the hot prefix spills to the least loaded replica
    assert router.choose(a, [load(), load(in_flight=3)]) == 0
    # queued requests count as load too (in flight and waiting)
    assert router.choose(a, [load(), load(in_flight=2, waiting=1)]) == 0
    # a nearly full KV cache takes no new prompt for its prefix alone
    assert router.choose(a, [load(), load(kv=0.97)]) == 0


def test_no_match_goes_to_the_least_loaded_and_ties_rotate() -> None:
    router = Router(3, block_size=4)
    fresh = router.hash_prompt(list(range(100, 108)))
    assert router.choose(fresh, [load(2), load(1), load(3)]) == 1
    # equal loads: the cursor (after 1) picks 2, then 0, then 1
    assert [router.choose(fresh, [IDLE, IDLE, IDLE]) for _ in range(3)] == [2, 0, 1]


def test_a_short_shared_head_does_not_attract_every_prompt() -> None:
    router = Router(2, block_size=4)
    head = list(range(8))  # two blocks every prompt starts with (a system prompt)
    first = router.hash_prompt(head + list(range(100, 120)))  # 7 blocks
    router.record(0, first)
    second = router.hash_prompt(head + list(range(200, 220)))
    assert router.matched_blocks(0, second) == 2  # 2 of 7: below half, spread by load
    assert router.choose(second, [IDLE, IDLE]) == 0  # the tie's turn (cursor at 0)
    assert router.choose(second, [load(1), IDLE]) == 1
    # half the prompt or more: the holder wins despite a little load
    third = router.hash_prompt(head + list(range(100, 108)) + list(range(300, 312)))
    assert router.matched_blocks(0, third) == 4
    assert router.choose(third, [load(1), IDLE]) == 0


def test_equal_matches_go_to_the_less_loaded_holder() -> None:
    router = Router(3, block_size=4)
    a = router.hash_prompt(list(range(8)))
    router.record(0, a)
    router.record(2, a)
    assert router.choose(a, [load(1), IDLE, load(0)]) == 2


def test_unavailable_replicas_are_skipped() -> None:
    router = Router(2, block_size=4)
    a = router.hash_prompt(list(range(8)))
    router.record(0, a)
    assert router.choose(a, [ReplicaLoad(False), IDLE]) == 1
    with pytest.raises(NoReplicaError):
        router.choose(a, [ReplicaLoad(False), ReplicaLoad(False)])


def test_round_robin_ignores_prefixes_and_load() -> None:
    router = Router(3, block_size=4, policy="round_robin")
    tokens = list(range(8))
    assert router.hash_prompt(tokens) == []
    picks = [router.choose([], [load(5), IDLE, IDLE]) for _ in range(4)]
    assert picks == [0, 1, 2, 0]
    assert router.choose([], [IDLE, ReplicaLoad(False), IDLE]) == 2


def test_forget_drops_a_restarted_replica() -> None:
    router = Router(2, block_size=4)
    a = router.hash_prompt(list(range(8)))
    router.record(0, a)
    router.record(1, a[:1])
    router.forget(0)
    assert router.matched_blocks(0, a) == 0
    assert router.matched_blocks(1, a) == 1
    assert router.num_blocks == 1  # the block only replica 0 had is gone


def test_the_index_is_bounded_and_forgets_the_oldest_first() -> None:
    router = Router(2, block_size=1, max_blocks=4)
    old = router.hash_prompt([1, 2, 3])
    new = router.hash_prompt([9, 8, 7])
    router.record(0, old)
    router.record(1, new)
    assert router.num_blocks == 4
    assert router.matched_blocks(0, old) == 0  # its first blocks were evicted
    assert router.matched_blocks(1, new) == 3


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="policy"):
        Router(2, block_size=4, policy="random")
    with pytest.raises(ValueError):
        Router(0, block_size=4)
