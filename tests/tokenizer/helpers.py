"""Shared by the tokenizer tests: a GGUF metadata reader and a small llama-kind vocabulary."""

from __future__ import annotations

import os
from typing import Any


def read_gguf_metadata(path: str | os.PathLike[str]) -> dict[str, Any]:
    """GGUF metadata as plain Python values, the shape Heron's GGUF reader hands over."""
    import gguf as gguf

    reader = gguf.GGUFReader(str(path))
    return {key: field.contents() for key, field in reader.fields.items()}


UNKNOWN, CONTROL, USER_DEFINED, BYTE, NORMAL = 2, 3, 4, 6, 1
PIECES = [
    "\u2581t", "he", "\u2581the", "an", "nd", "\u2581a", "\u2581and", "in", "\u2581in", "or",
    "\u2581w", "ld", "\u2581wor", "\u2581world", "er", "\u2581he", "ll", "\u2581hell",
    "\u2581hello", "\u2581\u2581", "at", "\u2581c", "\u2581cat", "is", "\u2581is", "\u2581s", "ea",
    "\u2581sea",
]  # fmt: skip
CHARS = ["\u2581", "t", "h", "e", "a", "n", "d", "o", "r", "w", "l", "i", "s", "c", "é", "."]


def spm_vocab() -> tuple[list[str], list[float], list[int]]:
    """(tokens, scores, types) with unk/bos/eos, 256 byte tokens, pieces and one user token."""
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    types = [UNKNOWN, CONTROL, CONTROL] + [BYTE] * 256
    scores = [0.0] * len(tokens)
    tokens += PIECES + CHARS + ["<|user|>"]
    types += [NORMAL] * (len(PIECES) + len(CHARS)) + [USER_DEFINED]
    scores += [-float(rank) for rank in range(len(PIECES))]  # learned merges: earlier is better
    scores += [-1000.0 - rank for rank in range(len(CHARS))] + [0.0]
    return tokens, scores, types


def spm_metadata(**extra: Any) -> dict[str, Any]:
    tokens, scores, types = spm_vocab()
    metadata: dict[str, Any] = {
        "general.architecture": "llama",
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": scores,
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
    }
    metadata.update(extra)
    return metadata
