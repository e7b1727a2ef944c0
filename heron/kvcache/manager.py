"""Per-request block tables on top of ``BlockPool``, with automatic prefix caching.

A request's block table is append-only while it runs: block ``i`` holds token positions
``[i * block_size, (i + 1) * block_size)``. ``free`` gives everything back at once.

Typical use by the scheduler for a waiting request, then on every step it runs:

    blocks, num_hit = kv.get_computed_blocks(rid, token_ids, num_prompt_tokens)
    ok = kv.allocate_slots(rid, token_ids, 0, num_new, new_computed_blocks=blocks)
    ...
    ok = kv.allocate_slots(rid, token_ids, num_computed_tokens, num_new)   # later steps
    kv.free(rid)                                                           # finish/abort/preempt
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from heron.kvcache.block_hash import PROCESS_HASH_SEED, BlockHash, hash_block_tokens
from heron.kvcache.block_pool import BlockContent, BlockPool, KVCacheBlock


@dataclass(slots=True)
class _RequestState:
    """What the manager remembers about one request id."""

    extra_key: bytes | None
    blocks: list[KVCacheBlock] = field(default_factory=list)
    # Chained hashes of the request's full blocks, computed lazily and kept until free().
    block_hashes: list[BlockHash] = field(default_factory=list)
    # Entry id of the cache entry backing each registered full block (its own, or the existing
    # block's for a duplicate); the next block names the last one as its parent.
    entry_ids: list[int] = field(default_factory=list)


class KVCacheManager:
    """Block tables and prefix caching for all requests, keyed by ``request_id``."""

    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        enable_caching: bool = True,
        hash_seed: bytes | None = None,
    ) -> None:
        if block_size <= 0:
            raise ValueError(f"block_size must be positive, got {block_size}")
        self.block_size = block_size
        self.enable_caching = enable_caching
        self.hash_seed = PROCESS_HASH_SEED if hash_seed is None else hash_seed
        self.block_pool = BlockPool(num_blocks, enable_caching)
        self._requests: dict[str, _RequestState] = {}

    @property
    def num_blocks(self) -> int:
        return self.block_pool.num_blocks

    @property
    def num_free_blocks(self) -> int:
        """Blocks no request holds (some may still be cached)."""
        return self.block_pool.num_free_blocks

    @property
    def usage(self) -> float:
        """Fraction of blocks held by requests, in [0, 1]."""
        return self.block_pool.usage

    def get_block_ids(self, request_id: str) -> list[int]:
        """The request's block table as block ids (empty for an unknown id). Pure."""
        state = self._requests.get(request_id)
        return [] if state is None else [b.block_id for b in state.blocks]

    def get_computed_blocks(
        self,
        request_id: str,
        token_ids: Sequence[int],
        num_prompt_tokens: int,
        extra_key: bytes | None = None,
    ) -> tuple[list[KVCacheBlock], int]:
        """Find the longest run of cached blocks matching the start of ``token_ids``: full
        blocks by hash, then possibly a tail (the partly filled block a finished request left
        after the last of them) whose first rows match the next tokens.

        At least one token is always left to compute, so at most
        ``(len(token_ids) - 1) // block_size`` full blocks can match:

            token_ids (block_size 4, 8 tokens):  | 0 1 2 3 | 4 5 6 7 |
            both blocks cached -> returns 1 block, 4 tokens; tokens 4..7 are recomputed

            a request finished with tokens 0..5 computed left | 0 1 2 3 | 4 5 . . |
            token_ids | 0 1 2 3 | 4 5 9 9 | -> returns both blocks, 6 tokens

        Returns ``(blocks, num_tokens)``: ``num_tokens == len(blocks) * block_size``, or, when
        the last block is a tail, ``(len(blocks) - 1) * block_size`` plus its matching rows.
        Does not take references: pass both to ``allocate_slots`` before allocating anything
        else, since any allocation may evict free ones. Mutates: caches the request's block
        hashes (so call ``free`` even for a request that is never allocated) and adds
        ``num_prompt_tokens`` / ``num_tokens`` to the pool's ``prefix_queries`` /
        ``prefix_hits``. With caching disabled returns ``([], 0)`` and records nothing.
        Only for a request that holds no blocks yet.
        """
        if not self.enable_caching:
            return [], 0
        state = self._state(request_id, extra_key)
        if state.blocks:
            raise ValueError(f"request {request_id!r} already holds blocks")
        bs = self.block_size
        max_blocks = max(len(token_ids) - 1, 0) // bs
        self._ensure_hashes(state, token_ids, max_blocks)
        hits: list[KVCacheBlock] = []
        parent_entry = 0
        for i in range(max_blocks):
            content = BlockContent(parent_entry, tuple(token_ids[i * bs : (i + 1) * bs]), extra_key)
            block = self.block_pool.get_cached_block(state.block_hashes[i], content)
            if block is None:
                break
            hits.append(block)
            parent_entry = block.entry_id
        num_hit_tokens = len(hits) * bs
        tail = self.block_pool.get_tail(parent_entry, extra_key)
        if tail is not None and tail.tail is not None:
            # Leave the last token to compute, as for full blocks.
            rest = token_ids[num_hit_tokens : len(token_ids) - 1]
            n = 0
            for cached, wanted in zip(tail.tail.token_ids, rest, strict=False):
                if cached != wanted:
                    break
                n += 1
            if n:
                hits.append(tail)
                num_hit_tokens += n
        self.block_pool.prefix_queries += num_prompt_tokens
        self.block_pool.prefix_hits += num_hit_tokens
        return hits, num_hit_tokens

    def allocate_slots(
        self,
        request_id: str,
        token_ids: Sequence[int],
        num_computed_tokens: int,
        num_new_tokens: int,
        new_computed_blocks: list[KVCacheBlock] | None = None,
        extra_key: bytes | None = None,
        num_new_computed_tokens: int | None = None,
        num_lookahead_tokens: int = 0,
    ) -> bool:
        """Grow the request's block table so it covers the tokens about to be computed.

            |<-------------------------- num_total_tokens -------------------------->|
            | num_computed_tokens | num_new_computed_tokens       | num_new_tokens |
            |  already in table   | prefix hit, appended by this  | computed next  |

            blocks needed = ceil(num_total_tokens / block_size)
                            - len(blocks held) - len(new_computed_blocks)

        ``num_computed_tokens`` counts tokens before the new computed blocks; when any are
        given it must equal ``len(blocks held) * block_size``. ``num_new_computed_tokens``
        (default ``len(new_computed_blocks) * block_size``) is what ``get_computed_blocks``
        returned with them: less than a whole number of blocks when the last is a tail, which
        this call then takes over (its later rows are overwritten). ``token_ids`` must hold at least
        ``num_total_tokens`` tokens, and ``extra_key`` must match every earlier call for
        this request id. ``num_lookahead_tokens`` more slots are covered after them for
        speculative drafts, which are not in ``token_ids``: their blocks are never cached
        here (a draft's block is registered only once accepted tokens fill it, by a later
        call), so no rejected token can enter the prefix cache.

        Returns False, changing nothing, if the free blocks (not counting free cached blocks
        in ``new_computed_blocks``, which touching takes out of the queue) cannot cover the
        blocks needed. Otherwise returns True having mutated: the computed blocks are touched
        and appended, new blocks are popped from the pool and appended, and (caching on) every
        block full within the first ``num_total_tokens`` tokens is registered in the cache.
        """
        new_computed = new_computed_blocks or []
        bs = self.block_size
        if num_computed_tokens < 0 or num_new_tokens < 0:
            raise ValueError("num_computed_tokens and num_new_tokens must be non-negative")
        num_hit = len(new_computed) * bs
        if num_new_computed_tokens is not None:
            num_hit = num_new_computed_tokens
            if (
                new_computed
                and not (len(new_computed) - 1) * bs < num_hit <= len(new_computed) * bs
            ):
                raise ValueError("num_new_computed_tokens does not match new_computed_blocks")
            if not new_computed and num_hit:
                raise ValueError("num_new_computed_tokens without new_computed_blocks")
        # A partial hit ends in a tail block, which is not (and must not be) a registered
        # full block.
        num_full_hits = num_hit // bs
        if num_hit % bs and new_computed[-1].tail is None:
            raise ValueError("a partial prefix hit must end in a tail block")
        num_total_tokens = num_computed_tokens + num_hit + num_new_tokens
        if num_total_tokens > len(token_ids):
            raise ValueError(f"need {num_total_tokens} token ids, got {len(token_ids)}")
        state = self._requests.get(request_id)
        held = [] if state is None else state.blocks
        if new_computed and num_computed_tokens != len(held) * bs:
            raise ValueError("new_computed_blocks must start right after the held blocks")

        if num_lookahead_tokens < 0:
            raise ValueError("num_lookahead_tokens must be non-negative")
        num_slots = num_total_tokens + num_lookahead_tokens
        num_needed = -(-num_slots // bs) - len(held) - len(new_computed)
        num_needed = max(num_needed, 0)
        num_evictable_hits = sum(1 for b in new_computed if b.ref_cnt == 0)
        if num_needed > self.block_pool.num_free_blocks - num_evictable_hits:
            return False

        state = self._state(request_id, extra_key)
        self.block_pool.touch(new_computed)
        state.blocks.extend(new_computed)
        if self.enable_caching and new_computed:
            # Hits start right after the held blocks, which are all full and registered, so
            # the full hits' entries continue the request's chain.
            assert len(state.entry_ids) + len(new_computed) == len(state.blocks)
            state.entry_ids.extend(b.entry_id for b in new_computed[:num_full_hits])
        state.blocks.extend(self.block_pool.get_new_blocks(num_needed))
        if self.enable_caching:
            self._cache_full_blocks(state, token_ids, num_total_tokens)
        return True

    def cache_computed(self, request_id: str, token_ids: Sequence[int], num_tokens: int) -> None:
        """Register the request's blocks that the first ``num_tokens`` of ``token_ids`` fill
        (speculative drafts accepted after the step's allocation: without this, a request
        finishing on them would leave their blocks out of the prefix cache). Only for tokens
        whose KV is written. A no-op for an unknown id or with caching off."""
        state = self._requests.get(request_id)
        if state is None or not self.enable_caching:
            return
        self._cache_full_blocks(
            state, token_ids, min(num_tokens, len(state.blocks) * self.block_size)
        )

    def free(
        self,
        request_id: str,
        token_ids: Sequence[int] | None = None,
        num_computed_tokens: int = 0,
    ) -> None:
        """Release the request's blocks, last block first, and forget the request.

        Mutates: each block's ``ref_cnt -= 1``; blocks reaching 0 join the free-queue tail in
        reverse table order (so the request's last blocks are evicted first) and stay cached.
        Given the request's ``token_ids`` and how many of them have their KV written
        (``num_computed_tokens``), a partly filled block after its last full one that nobody
        else holds is also offered as a tail, so a request continuing these tokens (the next
        turn of a conversation) reuses its rows. A no-op for an unknown ``request_id``.
        """
        state = self._requests.pop(request_id, None)
        if state is None:
            return
        self.block_pool.free_blocks(reversed(state.blocks))
        if not self.enable_caching or token_ids is None:
            return
        bs = self.block_size
        num_full, num_rows = divmod(min(num_computed_tokens, len(token_ids)), bs)
        if num_rows == 0 or num_full >= len(state.blocks) or len(state.entry_ids) < num_full:
            return
        block = state.blocks[num_full]
        if block.ref_cnt or block.block_hash is not None:
            return
        parent = state.entry_ids[num_full - 1] if num_full else 0
        rows = tuple(token_ids[num_full * bs : num_full * bs + num_rows])
        self.block_pool.cache_tail(block, parent, rows, state.extra_key)

    def fork(self, parent_id: str, child_id: str, num_tokens: int) -> int:
        """Share the parent's full blocks covering its first ``num_tokens`` tokens with a child.

            parent: | b0 full | b1 full | b2 partial |     num_tokens = 2 * block_size + 3
            child:  | b0      | b1      |                  returns 2 * block_size

        Only full blocks are shared, so nobody ever writes into a shared block (no
        copy-on-write). Mutates: the shared blocks' ``ref_cnt += 1``; the child starts with
        them as its table (and the parent's hashes and extra key). Returns the number of
        tokens they cover, which is the child's ``num_computed_tokens``. The child must hold
        no blocks; the parent must hold at least ``num_tokens // block_size`` blocks.
        """
        parent = self._requests.get(parent_id)
        if parent is None:
            raise ValueError(f"unknown parent request {parent_id!r}")
        child = self._requests.get(child_id)
        if child is not None and child.blocks:
            raise ValueError(f"child request {child_id!r} already holds blocks")
        n = num_tokens // self.block_size
        if n > len(parent.blocks):
            raise ValueError(f"parent {parent_id!r} holds {len(parent.blocks)} blocks, not {n}")
        if self.enable_caching and len(parent.entry_ids) < n:
            raise ValueError(f"parent {parent_id!r} has only {len(parent.entry_ids)} full blocks")
        shared = parent.blocks[:n]
        self.block_pool.touch(shared)
        self._requests[child_id] = _RequestState(
            extra_key=parent.extra_key,
            blocks=list(shared),
            block_hashes=parent.block_hashes[:n],
            entry_ids=parent.entry_ids[:n],
        )
        return n * self.block_size

    def reset_prefix_cache(self) -> bool:
        """Drop every cached hash if no request holds blocks; returns whether it did."""
        return self.block_pool.reset_prefix_cache()

    def _state(self, request_id: str, extra_key: bytes | None) -> _RequestState:
        state = self._requests.get(request_id)
        if state is None:
            state = self._requests[request_id] = _RequestState(extra_key=extra_key)
        elif state.extra_key != extra_key:
            raise ValueError(f"request {request_id!r} changed its extra_key")
        return state

    def _ensure_hashes(self, state: _RequestState, token_ids: Sequence[int], n: int) -> None:
        bs = self.block_size
        hashes = state.block_hashes
        for i in range(len(hashes), n):
            parent = hashes[-1] if hashes else None
            chunk = token_ids[i * bs : (i + 1) * bs]
            hashes.append(hash_block_tokens(parent, chunk, state.extra_key, self.hash_seed))

    def _cache_full_blocks(
        self, state: _RequestState, token_ids: Sequence[int], num_tokens: int
    ) -> None:
        bs = self.block_size
        start, end = len(state.entry_ids), num_tokens // bs
        if end <= start:
            return
        self._ensure_hashes(state, token_ids, end)
        entries = self.block_pool.cache_full_blocks(
            blocks=state.blocks[start:end],
            block_hashes=state.block_hashes[start:end],
            block_token_ids=[tuple(token_ids[i * bs : (i + 1) * bs]) for i in range(start, end)],
            extra_key=state.extra_key,
            parent_entry=state.entry_ids[-1] if state.entry_ids else 0,
        )
        state.entry_ids.extend(entries)
