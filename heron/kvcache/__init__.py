"""Paged KV cache bookkeeping: block pool, chained block hashes and the per-request manager."""

from __future__ import annotations

from heron.kvcache.block_hash import BlockHash, hash_block_tokens
from heron.kvcache.block_pool import BlockPool, FreeBlockQueue, KVCacheBlock
from heron.kvcache.manager import KVCacheManager

__all__ = [
    "BlockHash",
    "BlockPool",
    "FreeBlockQueue",
    "KVCacheBlock",
    "KVCacheManager",
    "hash_block_tokens",
]
