"""Which data-parallel replica serves a request.

``prefix`` (the default): the replica most likely to hold the longest cached prefix of the
prompt, unless that replica is clearly busier than the least loaded one; then the least
loaded. The router hashes the prompt's full blocks exactly as the KV cache does
(``hash_block_tokens``, chained, with the adapter as the extra key) and keeps a bounded
index of which replicas were sent each block: an approximation of their caches (a replica
may have evicted a block since), cheap enough for every request, and never wrong about
output, only about speed. ``round_robin`` ignores both, for comparison.

Pure logic: no I/O, no clocks; ``choose`` and ``record`` mutate the cursor and the index.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

from heron.engine.replica import ROUTER_POLICIES
from heron.kvcache.block_hash import PROCESS_HASH_SEED, BlockHash, hash_block_tokens

POLICIES = ROUTER_POLICIES
# Blocks the index remembers (LRU): 64 Ki blocks x 16 tokens covers a million prompt tokens
# in a few MiB.
DEFAULT_MAX_BLOCKS = 1 << 16
# A cache hit is worth this many more requests on the replica than on the least loaded one;
# past it the request goes to the least loaded (one hot prefix cannot pile onto one replica).
DEFAULT_BALANCE_SLACK = 2
# A replica whose KV cache is this full gets new prompts only as the least loaded one.
KV_FULL = 0.95
# A match shorter than this share of the prompt's blocks (a system prompt every request
# shares) does not choose the replica: such prompts spread by load instead.
DEFAULT_MIN_MATCH = 0.5


@dataclass(frozen=True, slots=True)
class ReplicaLoad:
    """What the router knows of one replica right now. ``in_flight``: the front end's
    requests on it (no lag); ``waiting``: the core's queue at its last step."""

    available: bool
    in_flight: int = 0
    waiting: int = 0
    kv_usage: float = 0.0

    @property
    def score(self) -> int:
        # Queued requests count twice: they have not started, and each adds to the wait of
        # everything behind it.
        return self.in_flight + self.waiting


class NoReplicaError(RuntimeError):
    """No replica can take a request now."""


class Router:
    """Routes by ``policy`` ("prefix" or "round_robin") over ``size`` replicas whose KV
    caches use ``block_size``-token blocks."""

    def __init__(
        self,
        size: int,
        block_size: int,
        policy: str = "prefix",
        max_blocks: int = DEFAULT_MAX_BLOCKS,
        balance_slack: int = DEFAULT_BALANCE_SLACK,
        min_match: float = DEFAULT_MIN_MATCH,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown router policy {policy!r}; use one of {POLICIES}")
        if size < 1 or block_size < 1 or max_blocks < 1 or balance_slack < 0:
            raise ValueError("size, block_size and max_blocks must be positive")
        self.size = size
        self.block_size = block_size
        self.policy = policy
        self.max_blocks = max_blocks
        self.balance_slack = balance_slack
        self.min_match = min_match
        self._cursor = 0  # the replica after the last round-robin pick
        # digest of a block (and its whole prefix) -> bit i set: sent to replica i
        self._index: OrderedDict[bytes, int] = OrderedDict()

    # ------------------------------------------------------------------ hashing
    def hash_prompt(self, token_ids: Sequence[int], extra_key: bytes | None = None) -> list[bytes]:
        """The digests of the prompt's full blocks, chained as the KV cache chains them.
        Empty for round-robin (it never looks)."""
        if self.policy != "prefix":
            return []
        digests: list[bytes] = []
        parent: BlockHash | None = None
        bs = self.block_size
        for start in range(0, len(token_ids) - bs + 1, bs):
            parent = hash_block_tokens(
                parent, token_ids[start : start + bs], extra_key, PROCESS_HASH_SEED
            )
            digests.append(parent.digest)
        return digests

    def matched_blocks(self, replica: int, digests: Sequence[bytes]) -> int:
        """How many leading blocks of the prompt were sent to ``replica``."""
        bit = 1 << replica
        n = 0
        for d in digests:
            if not self._index.get(d, 0) & bit:
                break
            n += 1
        return n

    # ------------------------------------------------------------------ choosing
    def choose(self, digests: Sequence[bytes], loads: Sequence[ReplicaLoad]) -> int:
        """The replica for a prompt with these block digests. Raises NoReplicaError when
        none is available. Advances the round-robin cursor."""
        candidates = [i for i, load in enumerate(loads) if load.available]
        if not candidates:
            raise NoReplicaError("no engine replica is available")
        if self.policy == "round_robin":
            return self._next_in_turn(candidates)
        least = min(loads[i].score for i in candidates)
        matches = {i: self.matched_blocks(i, digests) for i in candidates}
        best = max(matches.values())
        if best > 0 and best >= self.min_match * len(digests):
            holders = [
                i
                for i in candidates
                if matches[i] == best
                and loads[i].score <= least + self.balance_slack
                and loads[i].kv_usage < KV_FULL
            ]
            if holders:
                lowest = min(loads[i].score for i in holders)
                return self._next_in_turn([i for i in holders if loads[i].score == lowest])
        # The least loaded; of those, one whose KV cache is not nearly full.
        rank = {i: (loads[i].score, loads[i].kv_usage >= KV_FULL) for i in candidates}
        first = min(rank.values())
        return self._next_in_turn([i for i in candidates if rank[i] == first])

    def _next_in_turn(self, tied: list[int]) -> int:
        """Of ``tied`` (ascending), the first at or after the cursor; moves the cursor past
        it, so ties rotate instead of piling onto replica 0."""
        pick = next((i for i in tied if i >= self._cursor), tied[0])
        self._cursor = (pick + 1) % self.size
        return pick

    # ------------------------------------------------------------------ the index
    def record(self, replica: int, digests: Sequence[bytes]) -> None:
        """Remember that ``replica`` was sent (and so is computing, then caching) these
        blocks; the oldest blocks fall out past ``max_blocks``."""
        bit = 1 << replica
        index = self._index
        for d in digests:
            index[d] = index.get(d, 0) | bit
            index.move_to_end(d)
        while len(index) > self.max_blocks:
            index.popitem(last=False)

    def forget(self, replica: int) -> None:
        """Drop everything recorded for ``replica`` (it restarted with an empty cache)."""
        keep = ~(1 << replica)
        for d in list(self._index):
            mask = self._index[d] & keep
            if mask:
                self._index[d] = mask
            else:
                del self._index[d]

    @property
    def num_blocks(self) -> int:
        return len(self._index)
