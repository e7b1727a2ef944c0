"""Chained content hashes for full KV cache blocks.

A block's hash names the whole prefix ending at that block, not just the block's own tokens:

    tokens:  | t0 .. t15 | t16 .. t31 | t32 .. t47 | t48 t49 |
    hashes:  |    h0     |     h1     |     h2     |  (none)  |

    h0 = H(seed,  t0..t15,  extra_key)
    h1 = H(h0,    t16..t31, extra_key)
    h2 = H(h1,    t32..t47, extra_key)

Only full blocks get a hash; the partial tail (t48 t49) never does. The seed is random per
process, so digests cannot be predicted (or pre-computed to collide) from outside.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from hashlib import sha256

# NOTE(heron): one seed per process, so every KVCacheManager in a process agrees on digests
# unless a test passes its own seed.
PROCESS_HASH_SEED: bytes = os.urandom(32)

_ROOT_TAG = b"\x00"  # first block: the seed follows
_CHAIN_TAG = b"\x01"  # later blocks: the parent digest follows
_NO_EXTRA = b"\x00"
_HAS_EXTRA = b"\x01"


@dataclass(frozen=True, slots=True)
class BlockHash:
    """The sha256 digest naming a full block and every token before it."""

    digest: bytes

    def __repr__(self) -> str:
        return f"BlockHash({self.digest[:6].hex()})"


def hash_block_tokens(
    parent: BlockHash | None,
    token_ids: Sequence[int],
    extra_key: bytes | None,
    seed: bytes,
) -> BlockHash:
    """Hash one block's tokens, chained on its parent's digest (or on ``seed`` for block 0).

    The encoding is length-prefixed so no two different inputs share a byte string:

        root:   0x00 | u32 len(seed)  | seed   | u32 n | n x int64 token | extra
        chain:  0x01 | 32-byte parent digest   | u32 n | n x int64 token | extra
        extra:  0x00                             (no extra key)
                0x01 | u32 len(extra_key) | extra_key

    ``extra_key`` (cache salt, adapter id, ...) enters every block's hash. Pure: mutates nothing,
    returns the new block's hash. Raises ``struct.error`` for token ids outside int64.
    """
    h = sha256()
    if parent is None:
        h.update(_ROOT_TAG + struct.pack("<I", len(seed)) + seed)
    else:
        h.update(_CHAIN_TAG + parent.digest)
    h.update(struct.pack(f"<I{len(token_ids)}q", len(token_ids), *token_ids))
    if extra_key is None:
        h.update(_NO_EXTRA)
    else:
        h.update(_HAS_EXTRA + struct.pack("<I", len(extra_key)) + extra_key)
    return BlockHash(h.digest())
