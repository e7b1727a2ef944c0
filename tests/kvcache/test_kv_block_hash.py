"""Chained block hashes: determinism, chaining, seeds, extra keys and unambiguous encoding."""

from __future__ import annotations

import struct

from heron.kvcache import BlockHash, hash_block_tokens

SEED = b"test-seed"


def test_hash_is_deterministic_for_the_same_inputs() -> None:
    a = hash_block_tokens(None, [1, 2, 3, 4], None, SEED)
    b = hash_block_tokens(None, (1, 2, 3, 4), None, SEED)
    assert a == b
    assert isinstance(a, BlockHash) and len(a.digest) == 32
    assert hash(a) == hash(b)


def test_different_seed_gives_a_different_hash() -> None:
    assert hash_block_tokens(None, [1, 2], None, b"s1") != hash_block_tokens(
        None, [1, 2], None, b"s2"
    )


def test_parent_is_chained_into_the_hash() -> None:
    p1 = hash_block_tokens(None, [1, 2], None, SEED)
    p2 = hash_block_tokens(None, [3, 4], None, SEED)
    assert hash_block_tokens(p1, [5, 6], None, SEED) != hash_block_tokens(p2, [5, 6], None, SEED)
    # A chained block never equals a root block with the same tokens.
    assert hash_block_tokens(p1, [5, 6], None, SEED) != hash_block_tokens(None, [5, 6], None, SEED)


def test_extra_key_separates_hashes() -> None:
    none = hash_block_tokens(None, [1, 2], None, SEED)
    empty = hash_block_tokens(None, [1, 2], b"", SEED)
    salt = hash_block_tokens(None, [1, 2], b"salt", SEED)
    assert len({none, empty, salt}) == 3


def test_encoding_is_unambiguous() -> None:
    # Trailing zero tokens, negative ids and huge ids must not alias shorter inputs.
    assert hash_block_tokens(None, [1], None, SEED) != hash_block_tokens(None, [1, 0], None, SEED)
    assert hash_block_tokens(None, [-1], None, SEED) != hash_block_tokens(
        None, [2**63 - 1], None, SEED
    )
    # Seed bytes cannot be traded for token bytes.
    assert hash_block_tokens(None, [], None, b"\x01" + bytes(7)) != hash_block_tokens(
        None, [1], None, b""
    )


def test_root_and_chained_blocks_cannot_alias() -> None:
    # Were the chained form untagged, this digest would encode exactly like a root block's
    # tag + u32(27) + 27-byte seed.
    forged_parent = BlockHash(b"\x00" + struct.pack("<I", 27) + bytes(27))
    root = hash_block_tokens(None, [1], None, bytes(27))
    assert hash_block_tokens(forged_parent, [1], None, SEED) != root
