"""BlockPool and FreeBlockQueue: exact allocation order, free order, O(1) removal, usage."""

from __future__ import annotations

import pytest

from heron.kvcache import BlockPool, FreeBlockQueue, KVCacheBlock, hash_block_tokens


def free_ids(pool: BlockPool) -> list[int]:
    return [b.block_id for b in pool.free_block_queue.get_all_free_blocks()]


def test_initial_queue_is_in_id_order_and_block_zero_is_not_reserved() -> None:
    pool = BlockPool(num_blocks=5, enable_caching=True)
    assert free_ids(pool) == [0, 1, 2, 3, 4]
    assert pool.num_free_blocks == 5
    assert pool.usage == 0.0


def test_allocation_pops_from_the_head_with_ref_one() -> None:
    pool = BlockPool(num_blocks=10, enable_caching=True)
    blocks = pool.get_new_blocks(3)
    assert [b.block_id for b in blocks] == [0, 1, 2]
    assert [b.ref_cnt for b in blocks] == [1, 1, 1]
    assert free_ids(pool) == [3, 4, 5, 6, 7, 8, 9]
    assert pool.num_free_blocks == 7
    assert pool.usage == pytest.approx(0.3)


def test_get_new_blocks_raises_and_changes_nothing_when_short() -> None:
    pool = BlockPool(num_blocks=3, enable_caching=True)
    pool.get_new_blocks(2)
    with pytest.raises(ValueError):
        pool.get_new_blocks(2)
    assert free_ids(pool) == [2]


def test_free_appends_in_the_given_order() -> None:
    pool = BlockPool(num_blocks=10, enable_caching=True)
    blocks = pool.get_new_blocks(3)
    pool.free_blocks(reversed(blocks))  # a request's tail goes first
    assert free_ids(pool) == [3, 4, 5, 6, 7, 8, 9, 2, 1, 0]
    assert [b.ref_cnt for b in blocks] == [0, 0, 0]
    assert pool.usage == 0.0


def test_shared_block_is_freed_only_at_ref_zero() -> None:
    pool = BlockPool(num_blocks=4, enable_caching=True)
    blocks = pool.get_new_blocks(2)
    pool.touch([blocks[0]])
    assert blocks[0].ref_cnt == 2
    pool.free_blocks([blocks[0], blocks[1]])
    assert free_ids(pool) == [2, 3, 1]
    assert blocks[0].ref_cnt == 1
    pool.free_blocks([blocks[0]])
    assert free_ids(pool) == [2, 3, 1, 0]
    with pytest.raises(ValueError):
        pool.free_blocks([blocks[0]])


def test_touch_removes_a_free_block_from_the_middle() -> None:
    pool = BlockPool(num_blocks=5, enable_caching=True)
    blocks = pool.get_new_blocks(5)
    pool.free_blocks(blocks)
    assert free_ids(pool) == [0, 1, 2, 3, 4]
    pool.touch([blocks[2]])
    assert free_ids(pool) == [0, 1, 3, 4]
    assert blocks[2].ref_cnt == 1
    assert pool.num_free_blocks == 4
    assert pool.usage == pytest.approx(0.2)


def test_free_queue_rejects_double_append_and_foreign_remove() -> None:
    a, b = KVCacheBlock(0), KVCacheBlock(1)
    queue = FreeBlockQueue([a])
    with pytest.raises(ValueError):
        queue.append(a)
    with pytest.raises(ValueError):
        queue.remove(b)
    assert queue.popleft() is a
    with pytest.raises(ValueError):
        queue.popleft()
    assert queue.num_free_blocks == 0


def test_cached_free_block_is_evicted_when_popped() -> None:
    pool = BlockPool(num_blocks=2, enable_caching=True)
    (block,) = pool.get_new_blocks(1)
    h = hash_block_tokens(None, [1, 2], None, b"s")
    assert pool.cache_full_blocks([block], [h], [(1, 2)], None, parent_entry=0) == [block.entry_id]
    assert pool.hash_to_block == {h: block}
    pool.free_blocks([block])
    assert block.block_hash == h  # still cached while free
    assert [b.block_id for b in pool.get_new_blocks(1)] == [1]
    assert pool.num_evictions == 0
    assert [b.block_id for b in pool.get_new_blocks(1)] == [0]
    assert pool.hash_to_block == {}
    assert block.block_hash is None and block.content is None and block.entry_id == 0
    assert pool.num_evictions == 1


def test_reset_prefix_cache_only_when_nothing_is_held() -> None:
    pool = BlockPool(num_blocks=2, enable_caching=True)
    blocks = pool.get_new_blocks(1)
    h = hash_block_tokens(None, [1], None, b"s")
    pool.cache_full_blocks(blocks, [h], [(1,)], None, parent_entry=0)
    assert pool.reset_prefix_cache() is False
    assert pool.hash_to_block == {h: blocks[0]}
    pool.free_blocks(blocks)
    assert pool.reset_prefix_cache() is True
    assert pool.hash_to_block == {}
    assert blocks[0].block_hash is None
    assert free_ids(pool) == [1, 0]
