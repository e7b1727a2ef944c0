"""Tokenization for Heron: GGUF and HF vocabularies, special tokens, streaming decode."""

from __future__ import annotations

from heron.tokenizer.detokenizer import IncrementalDetokenizer
from heron.tokenizer.gguf_vocab import GGUFVocab, build_gguf_vocab
from heron.tokenizer.tokenizer import Tokenizer

__all__ = [
    "GGUFVocab",
    "IncrementalDetokenizer",
    "Tokenizer",
    "build_gguf_vocab",
]
