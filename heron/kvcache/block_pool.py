"""The pool of KV cache blocks: ref counts, the LRU free queue and the prefix-cache map.

Block ids index the KV tensors owned by the model runner; this module only does bookkeeping.
Invariants kept by every method:

* a block is in the free queue  <=>  its ``ref_cnt`` is 0;
* ``block.block_hash is not None``  <=>  ``hash_to_block[block.block_hash] is block``;
* ``block.tail is not None``  <=>  ``tail_blocks[tail key] is block``, and then the block is
  free and has no hash.

A free block may still be cached: it keeps its hash until ``get_new_blocks`` pops (evicts) it,
and a prefix hit on it pulls it back out of the queue through ``touch``.

A *tail* is the partly filled last block a finished (or preempted) request left behind: the
first few rows of the block after the request's last full block. It has no hash (it is not
full) and is found by its parent's entry id instead. Whoever hits it takes the block itself
(``touch`` ends the tail) and writes its own tokens after the matching rows, so a tail is used
once; it is how a conversation's next turn reuses the end of the previous reply.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from itertools import count

from heron.kvcache.block_hash import BlockHash


@dataclass(frozen=True, slots=True)
class BlockContent:
    """What a cached block holds, compared on every lookup so a digest collision cannot alias.

    ``parent_entry`` is the ``entry_id`` of the cached block before it in its chain (0 for the
    first block). Entry ids are never reused, so matching it proves the whole prefix matches,
    even if the parent's digest once collided with a different block.
    """

    parent_entry: int
    token_ids: tuple[int, ...]
    extra_key: bytes | None


@dataclass(slots=True, eq=False)
class KVCacheBlock:
    """One block of KV cache slots. Identity matters (``eq=False``): two blocks never compare
    equal, and ``prev_free_block``/``next_free_block`` link it into the ``FreeBlockQueue``."""

    block_id: int
    ref_cnt: int = 0
    block_hash: BlockHash | None = None
    content: BlockContent | None = None
    entry_id: int = 0  # unique id of the current cache entry; 0 when not cached
    tail: BlockContent | None = None  # set while the block is a free, reusable tail
    prev_free_block: KVCacheBlock | None = None
    next_free_block: KVCacheBlock | None = None

    def __repr__(self) -> str:
        return f"KVCacheBlock(id={self.block_id}, ref={self.ref_cnt}, hash={self.block_hash})"


class FreeBlockQueue:
    """Doubly linked list of free blocks, least recently freed at the head.

    Python's ``deque`` cannot drop an element from the middle in O(1); a prefix hit on a free
    cached block must do exactly that, so the links live on the blocks themselves:

        head <-> b5 <-> b4 <-> b9 <-> tail      (head and tail are sentinels)
                 ^ popleft() evicts here           ^ append() adds here
    """

    def __init__(self, blocks: Sequence[KVCacheBlock]) -> None:
        self.num_free_blocks = 0
        self._head = KVCacheBlock(block_id=-1)
        self._tail = KVCacheBlock(block_id=-1)
        self._head.next_free_block = self._tail
        self._tail.prev_free_block = self._head
        for block in blocks:
            self.append(block)

    def popleft(self) -> KVCacheBlock:
        """Unlink and return the head (least recently freed) block. Raises if empty."""
        block = self._head.next_free_block
        if block is None or block is self._tail:
            raise ValueError("no free blocks")
        self.remove(block)
        return block

    def remove(self, block: KVCacheBlock) -> None:
        """Unlink ``block`` from anywhere in the queue in O(1). Raises if it is not queued."""
        prev, nxt = block.prev_free_block, block.next_free_block
        if prev is None or nxt is None:
            raise ValueError(f"block {block.block_id} is not in the free queue")
        prev.next_free_block = nxt
        nxt.prev_free_block = prev
        block.prev_free_block = block.next_free_block = None
        self.num_free_blocks -= 1

    def append(self, block: KVCacheBlock) -> None:
        """Link ``block`` at the tail (most recently freed). Raises if it is already queued."""
        if block.prev_free_block is not None or block.next_free_block is not None:
            raise ValueError(f"block {block.block_id} is already in the free queue")
        last = self._tail.prev_free_block
        assert last is not None
        last.next_free_block = block
        block.prev_free_block = last
        block.next_free_block = self._tail
        self._tail.prev_free_block = block
        self.num_free_blocks += 1

    def get_all_free_blocks(self) -> list[KVCacheBlock]:
        """All free blocks, head (next to evict) first. O(n); for tests and debugging."""
        out: list[KVCacheBlock] = []
        block = self._head.next_free_block
        while block is not None and block is not self._tail:
            out.append(block)
            block = block.next_free_block
        return out


class BlockPool:
    """Owns every ``KVCacheBlock``, the free queue and the hash -> block prefix-cache map.

    All blocks start free, queued in id order 0..N-1 (no block is reserved).
    Metrics counters: ``prefix_queries`` / ``prefix_hits`` count prompt tokens looked up and
    tokens found (maintained by ``KVCacheManager``), ``num_evictions`` counts cached blocks
    whose hash was dropped to reuse them.
    """

    def __init__(self, num_blocks: int, enable_caching: bool) -> None:
        if num_blocks <= 0:
            raise ValueError(f"num_blocks must be positive, got {num_blocks}")
        self.num_blocks = num_blocks
        self.enable_caching = enable_caching
        self.blocks = [KVCacheBlock(block_id=i) for i in range(num_blocks)]
        self.free_block_queue = FreeBlockQueue(self.blocks)
        self.hash_to_block: dict[BlockHash, KVCacheBlock] = {}
        # (parent entry id, extra key) -> the tail block after that parent; one per parent,
        # the newest wins.
        self.tail_blocks: dict[tuple[int, bytes | None], KVCacheBlock] = {}
        self.prefix_queries = 0
        self.prefix_hits = 0
        self.num_evictions = 0
        self._entry_ids = count(1)

    @property
    def num_free_blocks(self) -> int:
        """Blocks with ``ref_cnt == 0``, cached or not (all of them can be allocated)."""
        return self.free_block_queue.num_free_blocks

    @property
    def usage(self) -> float:
        """Fraction of blocks held by at least one request, in [0, 1]."""
        return 1.0 - self.num_free_blocks / self.num_blocks

    def get_new_blocks(self, num_blocks: int) -> list[KVCacheBlock]:
        """Pop ``num_blocks`` blocks from the free-queue head (least recently freed first).

        Mutates: each popped block leaves the queue, loses its cache entry (``num_evictions``
        += 1 if it had one) and gets ``ref_cnt = 1``. Returns them in pop order. Raises
        ``ValueError`` and changes nothing if fewer than ``num_blocks`` are free.
        """
        if num_blocks > self.num_free_blocks:
            raise ValueError(f"cannot get {num_blocks} blocks, only {self.num_free_blocks} free")
        out: list[KVCacheBlock] = []
        for _ in range(num_blocks):
            block = self.free_block_queue.popleft()
            assert block.ref_cnt == 0
            if block.block_hash is not None:
                self._evict(block)
            if block.tail is not None:
                self._drop_tail(block)
            block.ref_cnt = 1
            out.append(block)
        return out

    def touch(self, blocks: Iterable[KVCacheBlock]) -> None:
        """Take one more reference on each block (a prefix hit or a fork).

        Mutates: ``ref_cnt += 1``; a block going 0 -> 1 leaves the free queue (O(1)); a tail
        stops being one (its new holder will write into it).
        """
        for block in blocks:
            if block.ref_cnt == 0:
                self.free_block_queue.remove(block)
            if block.tail is not None:
                self._drop_tail(block)
            block.ref_cnt += 1

    def free_blocks(self, ordered_blocks: Iterable[KVCacheBlock]) -> None:
        """Drop one reference on each block, in the order given.

        Mutates: ``ref_cnt -= 1``; blocks reaching 0 are appended to the free-queue tail in that
        order, keeping their cache entry. Callers pass a request's blocks in reverse so its tail
        blocks (least likely to be shared) are evicted first. Raises on a block already at 0.
        """
        for block in ordered_blocks:
            if block.ref_cnt <= 0:
                raise ValueError(f"block {block.block_id} freed more times than it was taken")
            block.ref_cnt -= 1
            if block.ref_cnt == 0:
                self.free_block_queue.append(block)

    def get_cached_block(self, block_hash: BlockHash, content: BlockContent) -> KVCacheBlock | None:
        """The block cached under ``block_hash`` if its content equals ``content``, else None.

        Pure lookup: ref counts and the free queue are unchanged (call ``touch`` to keep it).
        """
        block = self.hash_to_block.get(block_hash)
        if block is None or block.content != content:
            return None
        return block

    def cache_tail(
        self,
        block: KVCacheBlock,
        parent_entry: int,
        token_ids: tuple[int, ...],
        extra_key: bytes | None,
    ) -> None:
        """Offer a free, partly filled block as the tail after cache entry ``parent_entry``
        (0: the tail is a chain's first block); its first ``len(token_ids)`` rows hold those
        tokens. Replaces an older tail after the same parent. Mutates ``tail_blocks`` and
        ``block.tail``. Raises if the block is held, cached as a full block, or empty."""
        if block.ref_cnt != 0 or block.block_hash is not None or not token_ids:
            raise ValueError(f"block {block.block_id} cannot be a tail")
        key = (parent_entry, extra_key)
        old = self.tail_blocks.get(key)
        if old is not None:
            self._drop_tail(old)
        if block.tail is not None:
            self._drop_tail(block)
        block.tail = BlockContent(parent_entry, token_ids, extra_key)
        self.tail_blocks[key] = block

    def get_tail(self, parent_entry: int, extra_key: bytes | None) -> KVCacheBlock | None:
        """The tail block after cache entry ``parent_entry``, if any. Pure lookup."""
        return self.tail_blocks.get((parent_entry, extra_key))

    def cache_full_blocks(
        self,
        blocks: Sequence[KVCacheBlock],
        block_hashes: Sequence[BlockHash],
        block_token_ids: Sequence[tuple[int, ...]],
        extra_key: bytes | None,
        parent_entry: int,
    ) -> list[int]:
        """Register newly full, consecutive blocks of one chain in the prefix cache.

        ``parent_entry`` is the entry id of the chain's block just before ``blocks[0]`` (0 if
        ``blocks[0]`` is the first block). Mutates ``hash_to_block`` and each newly registered
        block's ``block_hash``/``content``/``entry_id``. A hash already held by a block with the
        same content (the same prefix computed twice) keeps the existing mapping; a hash held by
        different content (a digest collision) is also left alone, and the chain continues
        under a fresh entry id nobody can match.

        Returns, per block, the entry id that the chain's next block must name as its parent.
        """
        if not (len(blocks) == len(block_hashes) == len(block_token_ids)):
            raise ValueError("blocks, block_hashes and block_token_ids must have equal length")
        entries: list[int] = []
        for block, block_hash, token_ids in zip(blocks, block_hashes, block_token_ids, strict=True):
            content = BlockContent(parent_entry, token_ids, extra_key)
            existing = self.hash_to_block.get(block_hash)
            if existing is not None:
                same = existing.content == content
                parent_entry = existing.entry_id if same else next(self._entry_ids)
            elif block.block_hash is not None:
                raise ValueError(f"block {block.block_id} is already cached")
            else:
                parent_entry = next(self._entry_ids)
                block.block_hash, block.content, block.entry_id = block_hash, content, parent_entry
                self.hash_to_block[block_hash] = block
            entries.append(parent_entry)
        return entries

    def reset_prefix_cache(self) -> bool:
        """Forget every cache entry, but only when no block is held (returns False otherwise).

        Mutates ``hash_to_block`` and every block's cache fields; the free-queue order and the
        metrics counters are kept. Returns True if the cache was reset.
        """
        if self.num_free_blocks != self.num_blocks:
            return False
        self.hash_to_block.clear()
        self.tail_blocks.clear()
        for block in self.blocks:
            block.block_hash, block.content, block.entry_id = None, None, 0
            block.tail = None
        return True

    def _drop_tail(self, block: KVCacheBlock) -> None:
        assert block.tail is not None
        key = (block.tail.parent_entry, block.tail.extra_key)
        assert self.tail_blocks.get(key) is block
        del self.tail_blocks[key]
        block.tail = None

    def _evict(self, block: KVCacheBlock) -> None:
        assert block.block_hash is not None and self.hash_to_block.get(block.block_hash) is block
        del self.hash_to_block[block.block_hash]
        block.block_hash, block.content, block.entry_id = None, None, 0
        self.num_evictions += 1
