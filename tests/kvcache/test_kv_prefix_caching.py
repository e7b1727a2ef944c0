"""KVCacheManager: exact block ids, ref counts and eviction order under prefix caching."""

from __future__ import annotations

from collections.abc import Sequence

import pytest

import heron.kvcache.manager as manager_mod
from heron.kvcache import BlockHash, KVCacheBlock, KVCacheManager, hash_block_tokens

BS = 4


def make(num_blocks: int = 10, enable_caching: bool = True) -> KVCacheManager:
    return KVCacheManager(num_blocks, BS, enable_caching=enable_caching, hash_seed=b"seed")


def free_ids(kv: KVCacheManager) -> list[int]:
    return [b.block_id for b in kv.block_pool.free_block_queue.get_all_free_blocks()]


def refs(kv: KVCacheManager, ids: Sequence[int]) -> list[int]:
    return [kv.block_pool.blocks[i].ref_cnt for i in ids]


def admit(kv: KVCacheManager, rid: str, tokens: list[int], extra: bytes | None = None) -> int:
    """Prefix lookup + allocation for the whole prompt; returns the number of hit tokens."""
    hits, num_hit = kv.get_computed_blocks(rid, tokens, len(tokens), extra)
    assert kv.allocate_slots(rid, tokens, 0, len(tokens) - num_hit, hits, extra, num_hit)
    return num_hit


def test_hit_shares_the_first_full_blocks() -> None:
    kv = make()
    assert admit(kv, "a", list(range(10))) == 0
    assert kv.get_block_ids("a") == [0, 1, 2]
    assert len(kv.block_pool.hash_to_block) == 2  # the partial block 2 is not cached
    b_tokens = list(range(8)) + [100, 101, 102]
    hits, num_hit = kv.get_computed_blocks("b", b_tokens, len(b_tokens))
    assert ([b.block_id for b in hits], num_hit) == ([0, 1], 8)
    assert refs(kv, [0, 1]) == [1, 1]  # lookup alone takes no reference
    assert kv.allocate_slots("b", b_tokens, 0, 3, hits)
    assert kv.get_block_ids("b") == [0, 1, 3]
    assert refs(kv, [0, 1, 2, 3]) == [2, 2, 1, 1]
    assert free_ids(kv) == [4, 5, 6, 7, 8, 9]
    assert kv.usage == pytest.approx(0.4)


def test_miss_on_a_different_first_token() -> None:
    kv = make()
    admit(kv, "a", list(range(10)))
    assert kv.get_computed_blocks("b", [99] + list(range(1, 10)), 10) == ([], 0)


def test_a_match_never_covers_the_whole_prompt() -> None:
    kv = make()
    admit(kv, "a", list(range(8)))
    assert len(kv.block_pool.hash_to_block) == 2
    hits, num_hit = kv.get_computed_blocks("b", list(range(8)), 8)
    assert ([b.block_id for b in hits], num_hit) == ([0], 4)
    hits, num_hit = kv.get_computed_blocks("c", list(range(9)), 9)
    assert ([b.block_id for b in hits], num_hit) == ([0, 1], 8)
    assert kv.get_computed_blocks("d", [0, 1, 2, 3], 4) == ([], 0)


def test_partial_block_is_cached_only_once_full() -> None:
    kv = make()
    tokens = list(range(9))
    assert kv.allocate_slots("a", tokens, 0, 7)
    assert kv.get_block_ids("a") == [0, 1]
    block1 = kv.block_pool.blocks[1]
    assert block1.block_hash is None
    assert kv.get_computed_blocks("x", tokens, 9)[1] == 4
    kv.free("x")
    assert kv.allocate_slots("a", tokens, 7, 1)  # decode fills block 1
    assert kv.get_block_ids("a") == [0, 1]
    assert block1.block_hash is not None
    assert kv.allocate_slots("a", tokens, 8, 1)  # token 8 opens block 2
    assert kv.get_block_ids("a") == [0, 1, 2]
    assert kv.block_pool.blocks[2].block_hash is None
    assert kv.get_computed_blocks("y", tokens + [9], 10)[1] == 8


def test_lru_eviction_order() -> None:
    kv = make()
    a = list(range(9))
    b = list(range(50, 59))
    admit(kv, "a", a)
    admit(kv, "b", b)
    assert (kv.get_block_ids("a"), kv.get_block_ids("b")) == ([0, 1, 2], [3, 4, 5])
    kv.free("a")
    kv.free("b")
    assert free_ids(kv) == [6, 7, 8, 9, 2, 1, 0, 5, 4, 3]
    assert kv.num_free_blocks == 10
    admit(kv, "c", list(range(100, 128)))  # 7 blocks
    assert kv.get_block_ids("c") == [6, 7, 8, 9, 2, 1, 0]
    assert kv.block_pool.num_evictions == 2  # a's cached blocks 1 and 0; block 2 was partial
    assert free_ids(kv) == [5, 4, 3]
    assert kv.get_computed_blocks("a2", a, 9) == ([], 0)
    hits, num_hit = kv.get_computed_blocks("b2", b, 9)
    assert ([x.block_id for x in hits], num_hit) == ([3, 4], 8)
    assert len(kv.block_pool.hash_to_block) == 7 + 2


def test_ref_counts_after_one_of_two_sharers_is_freed() -> None:
    kv = make()
    admit(kv, "a", list(range(10)))
    admit(kv, "b", list(range(8)) + [7, 7, 7])
    assert kv.get_block_ids("b") == [0, 1, 3]
    kv.free("b")  # abort the second sharer
    assert refs(kv, [0, 1, 2, 3]) == [1, 1, 1, 0]
    assert free_ids(kv) == [4, 5, 6, 7, 8, 9, 3]
    kv.free("b")  # idempotent
    kv.free("never-seen")
    assert refs(kv, [0, 1, 2, 3]) == [1, 1, 1, 0]
    kv.free("a")
    assert free_ids(kv) == [4, 5, 6, 7, 8, 9, 3, 2, 1, 0]
    assert kv.get_block_ids("a") == []


def test_hit_on_a_freed_cached_block_revives_it() -> None:
    kv = make()
    tokens = list(range(9))
    admit(kv, "a", tokens)
    kv.free("a")
    assert free_ids(kv) == [3, 4, 5, 6, 7, 8, 9, 2, 1, 0]
    assert admit(kv, "b", tokens) == 8
    assert kv.get_block_ids("b") == [0, 1, 3]
    assert refs(kv, [0, 1, 3]) == [1, 1, 1]
    assert free_ids(kv) == [4, 5, 6, 7, 8, 9, 2]
    assert kv.block_pool.num_evictions == 0


def test_extra_key_separates_caches() -> None:
    kv = make()
    tokens = list(range(9))
    admit(kv, "a", tokens, b"tenant-x")
    assert kv.get_computed_blocks("n", tokens, 9) == ([], 0)
    assert kv.get_computed_blocks("y", tokens, 9, b"tenant-y") == ([], 0)
    assert kv.get_computed_blocks("x", tokens, 9, b"tenant-x")[1] == 8
    with pytest.raises(ValueError):
        kv.get_computed_blocks("x", tokens, 9, b"tenant-y")  # one extra key per request


def test_hash_collision_never_returns_other_content(monkeypatch: pytest.MonkeyPatch) -> None:
    constant = BlockHash(bytes(32))

    def collide(
        parent: BlockHash | None, token_ids: Sequence[int], extra: bytes | None, seed: bytes
    ) -> BlockHash:
        return constant

    monkeypatch.setattr(manager_mod, "hash_block_tokens", collide)
    kv = make()
    admit(kv, "a", list(range(9)))
    assert kv.block_pool.hash_to_block == {constant: kv.block_pool.blocks[0]}
    assert kv.get_computed_blocks("b", [100, 101, 102, 103, 4, 5, 6, 7, 8], 9) == ([], 0)
    # Same first block: only block 0 matches; block 1's tokens hash to the same digest but
    # the map holds block 0's content there.
    hits, num_hit = kv.get_computed_blocks("c", list(range(9)), 9)
    assert ([b.block_id for b in hits], num_hit) == ([0], 4)


def test_collided_parent_does_not_validate_an_orphaned_child(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = BlockHash(bytes(32))

    def roots_collide(
        parent: BlockHash | None, token_ids: Sequence[int], extra: bytes | None, seed: bytes
    ) -> BlockHash:
        return root if parent is None else hash_block_tokens(parent, token_ids, extra, seed)

    monkeypatch.setattr(manager_mod, "hash_block_tokens", roots_collide)
    kv = make()
    a, c = [1, 2, 3, 4], [5, 6, 7, 8]
    admit(kv, "a", a + [9])  # block 0 cached under `root` with content a
    assert kv.allocate_slots("r", a + c + [9], 0, 9)  # no lookup: block 2 duplicates block 0
    assert kv.get_block_ids("r") == [2, 3, 4]
    assert kv.block_pool.blocks[2].block_hash is None
    child_hash = hash_block_tokens(root, c, None, b"seed")
    assert kv.block_pool.hash_to_block[child_hash] is kv.block_pool.blocks[3]
    kv.free("a")
    z = list(range(100, 128))
    admit(kv, "z", z)  # evicts block 0; z's first block 5 now owns `root`
    assert kv.get_block_ids("z") == [5, 6, 7, 8, 9, 1, 0]
    assert kv.block_pool.hash_to_block[root] is kv.block_pool.blocks[5]
    # z[:4] + c matches block 5, and c's digest finds block 3, whose KV follows a, not z[:4].
    hits, num_hit = kv.get_computed_blocks("b", z[:4] + c + [0], 9)
    assert ([b.block_id for b in hits], num_hit) == ([5], 4)


def test_chain_does_not_continue_through_a_collided_block(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = BlockHash(bytes(32))

    def roots_collide(
        parent: BlockHash | None, token_ids: Sequence[int], extra: bytes | None, seed: bytes
    ) -> BlockHash:
        return root if parent is None else hash_block_tokens(parent, token_ids, extra, seed)

    monkeypatch.setattr(manager_mod, "hash_block_tokens", roots_collide)
    kv = make()
    a, b, c, d = [1, 2, 3, 4], [11, 12, 13, 14], [5, 6, 7, 8], [21, 22, 23, 24]
    admit(kv, "a", a + c + [9])  # blocks 0 (a) and 1 (a+c) cached
    # b collides with a at `root`; b+c then has a+c's digest, and b+c+d gets its own digest.
    assert kv.allocate_slots("b", b + c + d + [9], 0, 13)
    assert kv.get_block_ids("b") == [3, 4, 5, 6]
    assert kv.block_pool.blocks[5].block_hash is not None  # d is cached, under b's chain
    hits, num_hit = kv.get_computed_blocks("q", a + c + d + [0], 13)
    assert ([blk.block_id for blk in hits], num_hit) == ([0, 1], 8)


def test_duplicate_content_keeps_the_first_mapping() -> None:
    kv = make()
    tokens = list(range(9))
    assert kv.allocate_slots("a", tokens, 0, 9)
    assert kv.allocate_slots("b", tokens, 0, 9)  # same prompt, scheduled without a lookup
    assert kv.get_block_ids("b") == [3, 4, 5]
    mapped = sorted(b.block_id for b in kv.block_pool.hash_to_block.values())
    assert mapped == [0, 1]
    kv.free("a")
    hits, _ = kv.get_computed_blocks("c", tokens, 9)
    assert [b.block_id for b in hits] == [0, 1]


def test_failed_allocation_changes_nothing() -> None:
    kv = make(num_blocks=4)
    admit(kv, "a", list(range(9)))
    kv.free("a")
    assert free_ids(kv) == [3, 2, 1, 0]
    tokens = list(range(20))  # blocks 0 and 1 hit, 5 blocks needed in all
    hits, num_hit = kv.get_computed_blocks("b", tokens, 20)
    assert ([b.block_id for b in hits], num_hit) == ([0, 1], 8)
    pool = kv.block_pool
    before = (free_ids(kv), refs(kv, range(4)), dict(pool.hash_to_block))
    counters = (pool.prefix_queries, pool.prefix_hits, pool.num_evictions)
    # 4 blocks are free, but 2 of them are the hits themselves: only 2 remain for 3 new ones.
    assert kv.allocate_slots("b", tokens, 0, 12, hits) is False
    assert (free_ids(kv), refs(kv, range(4)), dict(pool.hash_to_block)) == before
    assert (pool.prefix_queries, pool.prefix_hits, pool.num_evictions) == counters
    assert kv.get_block_ids("b") == []
    assert kv.allocate_slots("b", tokens, 0, 8, hits) is True  # 16 tokens: exactly fits
    assert kv.get_block_ids("b") == [0, 1, 3, 2]
    assert free_ids(kv) == []
    assert kv.usage == 1.0


def test_fork_shares_exactly_the_full_blocks() -> None:
    kv = make()
    prompt = list(range(10))
    admit(kv, "p", prompt)
    assert kv.get_block_ids("p") == [0, 1, 2]
    assert kv.fork("p", "c", 10) == 8
    assert kv.get_block_ids("c") == [0, 1]
    assert refs(kv, [0, 1, 2]) == [2, 2, 1]
    with pytest.raises(ValueError):
        kv.fork("p", "c", 10)  # the child already holds blocks
    assert kv.allocate_slots("c", prompt, 8, 2)  # the child recomputes its own tail
    assert kv.get_block_ids("c") == [0, 1, 3]
    kv.free("p")
    assert refs(kv, [0, 1, 2, 3]) == [1, 1, 0, 1]
    assert free_ids(kv) == [4, 5, 6, 7, 8, 9, 2]
    kv.free("c")
    assert free_ids(kv) == [4, 5, 6, 7, 8, 9, 2, 3, 1, 0]
    assert kv.num_free_blocks == kv.num_blocks


def test_prefix_counters_count_tokens() -> None:
    kv = make()
    pool = kv.block_pool
    admit(kv, "a", list(range(10)))
    assert (pool.prefix_queries, pool.prefix_hits) == (10, 0)
    admit(kv, "b", list(range(13)))
    assert (pool.prefix_queries, pool.prefix_hits) == (23, 8)
    kv.get_computed_blocks("c", [7] * 6, 6)
    assert (pool.prefix_queries, pool.prefix_hits) == (29, 8)


def test_caching_disabled_allocates_but_never_hits() -> None:
    kv = make(enable_caching=False)
    admit(kv, "a", list(range(9)))
    assert kv.get_block_ids("a") == [0, 1, 2]
    assert kv.block_pool.hash_to_block == {}
    kv.free("a")
    assert kv.get_computed_blocks("b", list(range(9)), 9) == ([], 0)
    assert (kv.block_pool.prefix_queries, kv.block_pool.prefix_hits) == (0, 0)


def test_contract_errors() -> None:
    kv = make()
    with pytest.raises(ValueError):
        kv.allocate_slots("a", [1, 2], 0, 3)  # fewer token ids than slots
    admit(kv, "a", list(range(9)))
    with pytest.raises(ValueError):
        kv.get_computed_blocks("a", list(range(9)), 9)  # already holds blocks
    with pytest.raises(ValueError):
        kv.fork("missing", "c", 4)
    assert kv.reset_prefix_cache() is False
    kv.free("a")
    assert kv.reset_prefix_cache() is True
    assert kv.get_computed_blocks("b", list(range(9)), 9) == ([], 0)


def test_blocks_are_identity_compared() -> None:
    assert KVCacheBlock(0) != KVCacheBlock(0)


# --------------------------------------------------------------------------- tails


def finish(kv: KVCacheManager, rid: str, tokens: list[int], computed: int) -> None:
    """Free a request whose first ``computed`` tokens have their KV written."""
    kv.free(rid, tokens, computed)


def test_a_finished_requests_partial_block_is_reused_by_its_continuation() -> None:
    kv = make()
    tokens = list(range(10))  # prompt 0..9; the reply is tokens 10, 11 (11 sampled, not fed)
    admit(kv, "a", tokens)
    assert kv.allocate_slots("a", tokens + [10], 10, 1)
    assert kv.get_block_ids("a") == [0, 1, 2]
    finish(kv, "a", tokens + [10, 11], 11)
    tail = kv.block_pool.blocks[2]
    assert tail.tail is not None and tail.tail.token_ids == (8, 9, 10)
    assert free_ids(kv) == [3, 4, 5, 6, 7, 8, 9, 2, 1, 0]
    nxt = tokens + [10, 11, 70, 71, 72]  # the next turn: the whole history, then more
    hits, num_hit = kv.get_computed_blocks("b", nxt, len(nxt))
    assert ([b.block_id for b in hits], num_hit) == ([0, 1, 2], 11)
    assert kv.allocate_slots("b", nxt, 0, len(nxt) - 11, hits, num_new_computed_tokens=11)
    assert kv.get_block_ids("b") == [0, 1, 2, 3]
    assert refs(kv, [0, 1, 2, 3]) == [1, 1, 1, 1]
    assert tail.tail is None and kv.block_pool.tail_blocks == {}  # taken: used once
    assert tail.block_hash is not None  # rows 8..11 are now full and cached as a block
    assert free_ids(kv) == [4, 5, 6, 7, 8, 9]
    assert kv.block_pool.prefix_hits == 11


def test_a_tail_matches_only_its_common_rows_and_leaves_the_last_token() -> None:
    kv = make()
    tokens = list(range(11))
    admit(kv, "a", tokens)
    finish(kv, "a", tokens, 11)  # rows 8, 9, 10 in block 2
    hits, num_hit = kv.get_computed_blocks("b", list(range(9)) + [50, 51], 11)
    assert ([b.block_id for b in hits], num_hit) == ([0, 1, 2], 9)
    kv.free("b")
    hits, num_hit = kv.get_computed_blocks("c", list(range(10)), 10)  # last token is left
    assert ([b.block_id for b in hits], num_hit) == ([0, 1, 2], 9)
    kv.free("c")
    hits, num_hit = kv.get_computed_blocks("d", list(range(8)) + [60, 61], 10)
    assert ([b.block_id for b in hits], num_hit) == ([0, 1], 8)  # no common row: no tail
    kv.free("d")
    assert kv.get_computed_blocks("e", list(range(11)), 11, b"salt") == ([], 0)


def test_a_tail_needs_computed_rows_and_survives_a_forked_sibling() -> None:
    kv = make()
    tokens = list(range(8)) + [20, 21]
    admit(kv, "a", tokens)
    finish(kv, "a", tokens, 8)  # block 2 allocated, nothing computed in it
    assert kv.block_pool.tail_blocks == {}
    admit(kv, "b", tokens)  # hits blocks 0, 1; its own block 2 is popped from the queue head
    assert kv.get_block_ids("b") == [0, 1, 3]
    kv.fork("b", "c", 9)  # c shares the full blocks only
    finish(kv, "b", tokens, 10)  # c still holds 0 and 1; b's block 3 becomes the tail
    assert [b.block_id for b in kv.block_pool.tail_blocks.values()] == [3]
    assert refs(kv, [0, 1, 3]) == [1, 1, 0]
    kv.free("c")
    kv.free("never-seen", tokens, 10)  # an unknown request offers nothing
    assert [b.block_id for b in kv.block_pool.tail_blocks.values()] == [3]


def test_a_tail_is_forgotten_when_evicted() -> None:
    kv = make(num_blocks=4)
    a = list(range(6))
    admit(kv, "a", a)
    finish(kv, "a", a, 6)  # tail: block 1, rows 4, 5
    assert free_ids(kv) == [2, 3, 1, 0]
    b = [4, 5, 6, 9, 9]  # another chain
    admit(kv, "b", b)
    assert kv.get_block_ids("b") == [2, 3]
    finish(kv, "b", b, 5)  # tail: block 3, row 4
    assert free_ids(kv) == [1, 0, 3, 2]
    assert sorted(v.block_id for v in kv.block_pool.tail_blocks.values()) == [1, 3]
    admit(kv, "c", list(range(100, 112)))  # 3 blocks from the queue head
    assert kv.get_block_ids("c") == [1, 0, 3]
    assert kv.block_pool.tail_blocks == {}
    assert all(b.tail is None for b in kv.block_pool.blocks)
    kv.free("c")
    hits, num_hit = kv.get_computed_blocks("d", b + [1], 6)  # block 2 still cached, no tail
    assert ([x.block_id for x in hits], num_hit) == ([2], 4)


def test_a_newer_tail_after_the_same_blocks_replaces_the_older() -> None:
    kv = make()
    p = list(range(6))
    admit(kv, "a", p)
    finish(kv, "a", p, 6)  # tail: block 1, rows 4, 5
    q = list(range(4)) + [40, 41, 42]
    admit(kv, "b", q)  # hits block 0; a's tail (rows 4, 5) has no row in common
    assert kv.get_block_ids("b") == [0, 2]
    finish(kv, "b", q, 7)  # tail: block 2, rows 40, 41, 42, after the same block 0
    assert [v.block_id for v in kv.block_pool.tail_blocks.values()] == [2]
    assert kv.block_pool.blocks[1].tail is None
    assert kv.reset_prefix_cache()
    assert kv.block_pool.tail_blocks == {}
    assert all(b.tail is None for b in kv.block_pool.blocks)


def test_allocate_refuses_a_partial_hit_that_is_not_a_tail() -> None:
    kv = make()
    tokens = list(range(10))
    admit(kv, "a", tokens)
    kv.free("a")  # no token ids: no tail
    hits, num_hit = kv.get_computed_blocks("b", tokens, 10)
    assert num_hit == 8
    with pytest.raises(ValueError, match="tail"):
        kv.allocate_slots("b", tokens, 0, 1, hits + [kv.block_pool.blocks[2]], None, 9)
    with pytest.raises(ValueError, match="does not match"):
        kv.allocate_slots("b", tokens, 0, 1, hits, None, 9)
