"""Fitting token ids to a model's context: how many special tokens a tokenizer appends,
and cutting an over-long input while keeping them. Light (no torch): the HTTP process
tokenizes embedding inputs with it."""

from __future__ import annotations

from heron.tokenizer import Tokenizer


def special_suffix_len(tokenizer: Tokenizer) -> int:
    """How many special tokens the tokenizer appends after the text (1 for BERT's [SEP])."""
    core = tokenizer.encode("a", add_special_tokens=False)
    full = tokenizer.encode("a", add_special_tokens=True)
    for start in range(len(full) - len(core) + 1):
        if full[start : start + len(core)] == core:
            return len(full) - start - len(core)
    return 0


def fit_to_context(ids: list[int], max_len: int, truncate: bool, suffix_len: int = 0) -> list[int]:
    """``ids`` if it fits in ``max_len`` tokens; else cut to ``max_len`` keeping the last
    ``suffix_len`` (special) tokens, or raise ValueError when ``truncate`` is false."""
    if len(ids) <= max_len:
        return ids
    if not truncate:
        raise ValueError(
            f"input exceeds maximum context length: {len(ids)} tokens, the model takes {max_len}"
        )
    keep = max_len - suffix_len
    if keep < 1:
        return ids[:max_len]
    return ids[:keep] + ids[len(ids) - suffix_len :]
