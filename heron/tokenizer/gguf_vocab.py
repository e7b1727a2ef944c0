"""Build a `tokenizers.Tokenizer` from the tokenizer metadata of a GGUF file.

A GGUF carries no `tokenizer.json`; it stores the vocabulary under `tokenizer.ggml.*` keys. Two
kinds are supported:

* `gpt2`: byte-level BPE. Tokens are spelled in the byte-to-unicode alphabet and merges are given
  as `"left right"` strings. How text is split before BPE is named by `tokenizer.ggml.pre`.
* `llama`: SentencePiece BPE. Tokens carry scores; a space is spelled `"\u2581"`, and characters
  missing from the vocabulary fall back to `<0xNN>` byte tokens. Merges are derived from the
  scores: a pair may merge when its concatenation is a normal token, and pairs whose result has a
  higher score merge first. The `"\u2581"` prefix goes on the start of the text only (see
  `_sentencepiece_tokenizer`).

Control and unknown tokens become special added tokens (matched whole, skipped when decoding
with `skip_special_tokens`); user-defined tokens become non-special added tokens (matched whole,
always decoded), as llama.cpp treats them.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from numbers import Integral, Real
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers, processors
from tokenizers import Tokenizer as HFTokenizer

logger = logging.getLogger(__name__)

MAX_VOCAB_SIZE = 1 << 21  # 2M tokens; the largest real vocabularies are about 260k
MAX_TOKEN_CHARS = 4096
MAX_MERGES = 4 * MAX_VOCAB_SIZE
SPM_SPACE = "\u2581"
_SPACE_PREFIX_KEY = "tokenizer.ggml.add_space_prefix"

# llama.cpp token types (tokenizer.ggml.token_type).
TYPE_UNDEFINED, TYPE_NORMAL, TYPE_UNKNOWN, TYPE_CONTROL = 0, 1, 2, 3
TYPE_USER_DEFINED, TYPE_UNUSED, TYPE_BYTE = 4, 5, 6

# Texts of control tokens that end a turn, so generation should stop on them too.
EOT_LIKE_TOKENS = frozenset(
    {
        "<|eot_id|>",
        "<|eom_id|>",
        "<|im_end|>",
        "<|end|>",
        "<end_of_turn>",
        "<|endoftext|>",
        "<|end_of_text|>",
        "<EOT>",
        "<|return|>",
        "<|call|>",
        "<end_of_utterance>",
    }
)

# The GPT-2 split, as a regex. `ByteLevel(use_regex=True)` applies the same one.
_GPT2_SPLIT = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)

# tokenizer.ggml.pre -> the regex splits applied in order before byte-level BPE.
PRE_TOKENIZER_SPLITS: dict[str, tuple[str, ...]] = {
    "default": (_GPT2_SPLIT,),
    "gpt2": (_GPT2_SPLIT,),
    "gpt-2": (_GPT2_SPLIT,),
    "smollm": (r"\p{N}", _GPT2_SPLIT),
    "starcoder": (r"\p{N}", _GPT2_SPLIT),
    "refact": (r"\p{N}", _GPT2_SPLIT),
    "codeshell": (r"\p{N}", _GPT2_SPLIT),
    "llama-bpe": (_LLAMA3_SPLIT,),
    "llama3": (_LLAMA3_SPLIT,),
    "llama-v3": (_LLAMA3_SPLIT,),
    "falcon3": (_LLAMA3_SPLIT,),
    "smaug-bpe": (_LLAMA3_SPLIT,),
    "dbrx": (_LLAMA3_SPLIT,),
    "qwen2": (_QWEN2_SPLIT,),
    "deepseek-r1-qwen": (_QWEN2_SPLIT,),
    "megrez": (_QWEN2_SPLIT,),
}


@dataclass(slots=True)
class GGUFVocab:
    """A tokenizer built from GGUF metadata, plus the facts Heron needs beside it."""

    tokenizer: HFTokenizer
    model: str  # "gpt2" or "llama"
    bos_token_id: int | None
    eos_token_id: int | None
    unk_token_id: int | None
    pad_token_id: int | None
    add_bos_token: bool
    add_eos_token: bool
    # eos-like ids beside eos: the eot/eom keys and control tokens with a known end-of-turn text
    eot_token_ids: frozenset[int]
    # SentencePiece prefixes text that starts with a space too ("  a" -> "___a"); Metaspace does
    # not, so text starting with a space must get one more before encoding.
    double_leading_space: bool = False
    chat_templates: dict[str, str] = field(default_factory=dict)  # "default" plus named ones


def _fail(key: str, why: str) -> ValueError:
    return ValueError(f"malformed GGUF tokenizer metadata: {key} {why}")


def _str_list(metadata: Mapping[str, Any], key: str, limit: int) -> list[str] | None:
    value = metadata.get(key)
    if value is None:
        return None
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise _fail(key, f"must be a list of strings, got {type(value).__name__}")
    if len(value) > limit:
        raise _fail(key, f"has {len(value)} entries, more than the limit {limit}")
    for i, item in enumerate(value):
        if not isinstance(item, str):
            raise _fail(key, f"entry {i} is {type(item).__name__}, not str")
        if len(item) > MAX_TOKEN_CHARS:
            raise _fail(key, f"entry {i} is {len(item)} characters long")
    return list(value)


def _number_list(metadata: Mapping[str, Any], key: str, n: int, integral: bool) -> list[Any] | None:
    value = metadata.get(key)
    if value is None:
        return None
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise _fail(key, f"must be a list, got {type(value).__name__}")
    if len(value) != n:
        raise _fail(key, f"has {len(value)} entries but tokenizer.ggml.tokens has {n}")
    kind = Integral if integral else Real
    for i, item in enumerate(value):
        if isinstance(item, bool) or not isinstance(item, kind):
            raise _fail(key, f"entry {i} is {item!r}, not a number")
        if not integral and not math.isfinite(item):
            raise _fail(key, f"entry {i} is {item!r}, not finite")
    return [int(v) for v in value] if integral else [float(v) for v in value]


def _flag(metadata: Mapping[str, Any], key: str, default: bool) -> bool:
    value = metadata.get(key, default)
    if not isinstance(value, bool):
        raise _fail(key, f"must be a bool, got {value!r}")
    return value


def _token_id(metadata: Mapping[str, Any], key: str, n: int, strict: bool) -> int | None:
    value = metadata.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, Integral) or not 0 <= int(value) < n:
        if strict:
            raise _fail(key, f"is {value!r}, not a token id in [0, {n})")
        logger.warning("ignoring GGUF %s=%r: not a token id in [0, %d)", key, value, n)
        return None
    return int(value)


def _unique_vocab(tokens: list[str]) -> dict[str, int]:
    """token -> id. A repeated token keeps its first id; later copies get a placeholder
    spelling so every id still exists (they can be decoded, never produced by encoding)."""
    vocab: dict[str, int] = {}
    num_dups = 0
    for i, token in enumerate(tokens):
        if token in vocab:
            num_dups += 1
            token = f"<heron-duplicate-token-{i}>"
        vocab[token] = i
    if num_dups:
        logger.warning("GGUF vocabulary repeats %d tokens; the copies cannot be encoded", num_dups)
    return vocab


def _byte_level_tokenizer(metadata: Mapping[str, Any], vocab: dict[str, int]) -> HFTokenizer:
    merges_raw = _str_list(metadata, "tokenizer.ggml.merges", MAX_MERGES)
    if merges_raw is None:
        raise _fail("tokenizer.ggml.merges", "is missing; a gpt2 vocabulary needs merges")
    merges: list[tuple[str, str]] = []
    num_skipped = 0
    for i, merge in enumerate(merges_raw):
        # The left piece may itself be a space in a non-byte-level spelling, so search from 1.
        pos = merge.find(" ", 1)
        if pos < 0:
            raise _fail("tokenizer.ggml.merges", f"entry {i} ({merge!r}) is not 'left right'")
        left, right = merge[:pos], merge[pos + 1 :]
        if left in vocab and right in vocab and left + right in vocab:
            merges.append((left, right))
        else:
            num_skipped += 1
    if num_skipped:
        logger.warning("skipped %d GGUF merges naming tokens not in the vocabulary", num_skipped)
    tok = HFTokenizer(models.BPE(vocab=vocab, merges=merges, byte_fallback=False, fuse_unk=False))

    pre = metadata.get("tokenizer.ggml.pre", "default")
    splits = PRE_TOKENIZER_SPLITS.get(pre) if isinstance(pre, str) else None
    if splits is None:
        logger.warning("unknown GGUF tokenizer.ggml.pre %r; splitting text the GPT-2 way", pre)
        splits = PRE_TOKENIZER_SPLITS["default"]
    steps: list[pre_tokenizers.PreTokenizer] = [
        pre_tokenizers.Split(Regex(pattern), behavior="isolated") for pattern in splits
    ]
    steps.append(pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(steps)
    tok.decoder = decoders.ByteLevel()
    return tok


def derive_spm_merges(
    tokens: list[str], scores: list[float], types: list[int]
) -> list[tuple[str, str]]:
    """BPE merges equivalent to SentencePiece's score-driven merging.

    SentencePiece merges the adjacent pair whose concatenation is a vocabulary piece with the
    highest score. Listing every split `(left, right)` of every normal piece, both halves normal
    pieces themselves, ranked by the score of the whole piece, lets a plain BPE model do the same.
    """
    normal: dict[str, int] = {}
    for i, (token, kind) in enumerate(zip(tokens, types, strict=True)):
        if kind in (TYPE_NORMAL, TYPE_UNDEFINED) and token not in normal:
            normal[token] = i
    ranked: list[tuple[float, int, int, str, str]] = []
    for token, i in normal.items():
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in normal and right in normal:
                ranked.append((-scores[i], i, cut, left, right))
    ranked.sort(key=lambda r: r[:3])
    return [(left, right) for _, _, _, left, right in ranked]


def _sentencepiece_tokenizer(
    metadata: Mapping[str, Any],
    tokens: list[str],
    vocab: dict[str, int],
    types: list[int],
    unk_id: int | None,
) -> HFTokenizer:
    scores = _number_list(metadata, "tokenizer.ggml.scores", len(tokens), integral=False)
    if scores is None:
        raise _fail("tokenizer.ggml.scores", "is missing; a llama vocabulary needs scores")
    merges = derive_spm_merges(tokens, scores, types)
    unk = tokens[unk_id] if unk_id is not None else None
    bpe = models.BPE(vocab=vocab, merges=merges, unk_token=unk, byte_fallback=True, fuse_unk=True)
    tok = HFTokenizer(bpe)
    # NOTE(heron): the space prefix goes on the text's first run only, not after an added token
    # (HF behaviour, which chat fine-tunes saw; llama.cpp differs). Metaspace skips the prefix
    # when the text already starts with a space, which SentencePiece does not; the caller closes
    # that gap by doubling such a leading space (`GGUFVocab.double_leading_space`).
    add_space_prefix = _flag(metadata, _SPACE_PREFIX_KEY, True)
    tok.pre_tokenizer = pre_tokenizers.Metaspace(
        replacement=SPM_SPACE, prepend_scheme="first" if add_space_prefix else "never", split=False
    )
    steps: list[decoders.Decoder] = [
        decoders.Replace(SPM_SPACE, " "),
        decoders.ByteFallback(),
        decoders.Fuse(),
    ]
    if add_space_prefix:
        steps.append(decoders.Strip(content=" ", left=1, right=0))
    tok.decoder = decoders.Sequence(steps)
    return tok


def _infer_types(tokens: list[str], model: str, special_ids: list[int | None]) -> list[int]:
    """Token types for a file that has none: bytes by spelling, bos/eos/unk as control."""
    types = [TYPE_NORMAL] * len(tokens)
    if model == "llama":
        for i, token in enumerate(tokens):
            if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
                types[i] = TYPE_BYTE
    for special_id in special_ids:
        if special_id is not None:
            types[special_id] = TYPE_CONTROL
    return types


def _post_processor(
    tokens: list[str], bos_id: int | None, eos_id: int | None, add_bos: bool, add_eos: bool
) -> processors.TemplateProcessing | None:
    specials: list[dict[str, Any]] = []
    if add_bos and bos_id is not None:
        specials.append({"id": "BOS", "ids": [bos_id], "tokens": [tokens[bos_id]]})
    if add_eos and eos_id is not None:
        specials.append({"id": "EOS", "ids": [eos_id], "tokens": [tokens[eos_id]]})
    if not specials:
        return None

    def template(seq: str, type_id: int) -> list[str]:
        head = [f"BOS:{type_id}"] if add_bos and bos_id is not None else []
        tail = [f"EOS:{type_id}"] if add_eos and eos_id is not None else []
        return [*head, f"${seq}:{type_id}", *tail]

    return processors.TemplateProcessing(
        single=template("A", 0), pair=template("A", 0) + template("B", 1), special_tokens=specials
    )


def _chat_templates(metadata: Mapping[str, Any]) -> dict[str, str]:
    templates: dict[str, str] = {}
    default = metadata.get("tokenizer.chat_template")
    if isinstance(default, str):
        templates["default"] = default
    prefix = "tokenizer.chat_template."
    for key, value in metadata.items():
        if key.startswith(prefix) and isinstance(value, str) and key != prefix + "names":
            templates[key[len(prefix) :]] = value
    return templates


def build_gguf_vocab(metadata: Mapping[str, Any]) -> GGUFVocab:
    """Build Heron's tokenizer from GGUF metadata (`tokenizer.ggml.*`, `tokenizer.chat_template`).

    `metadata` maps GGUF keys to plain Python values (str, int, float, bool, lists of those).
    Raises ValueError for an unsupported tokenizer model or malformed metadata: list lengths that
    disagree, token ids out of range, absurd sizes, wrong value types.
    """
    model = metadata.get("tokenizer.ggml.model")
    if model not in ("gpt2", "llama"):
        raise ValueError(
            f"unsupported GGUF tokenizer.ggml.model {model!r}; Heron supports 'gpt2' and 'llama'"
        )
    tokens = _str_list(metadata, "tokenizer.ggml.tokens", MAX_VOCAB_SIZE)
    if not tokens:
        raise _fail("tokenizer.ggml.tokens", "is missing or empty")
    n = len(tokens)
    bos_id = _token_id(metadata, "tokenizer.ggml.bos_token_id", n, strict=True)
    eos_id = _token_id(metadata, "tokenizer.ggml.eos_token_id", n, strict=True)
    unk_id = _token_id(metadata, "tokenizer.ggml.unknown_token_id", n, strict=True)
    eot_id = _token_id(metadata, "tokenizer.ggml.eot_token_id", n, strict=True)
    eom_id = _token_id(metadata, "tokenizer.ggml.eom_token_id", n, strict=True)
    # A bad padding id is common in the wild and harmless to drop.
    pad_id = _token_id(metadata, "tokenizer.ggml.padding_token_id", n, strict=False)

    types = _number_list(metadata, "tokenizer.ggml.token_type", n, integral=True)
    if types is None:
        types = _infer_types(tokens, model, [bos_id, eos_id, unk_id, eot_id, eom_id])
    for i, kind in enumerate(types):
        if not TYPE_UNDEFINED <= kind <= TYPE_BYTE:
            raise _fail("tokenizer.ggml.token_type", f"entry {i} is {kind}, not a token type")

    vocab = _unique_vocab(tokens)
    if model == "gpt2":
        tok = _byte_level_tokenizer(metadata, vocab)
    else:
        tok = _sentencepiece_tokenizer(metadata, tokens, vocab, types, unk_id)

    # Add whole-match tokens in id order; each is already in the vocabulary under its own id.
    added: list[AddedToken] = []
    for i, (token, kind) in enumerate(zip(tokens, types, strict=True)):
        whole_match = kind in (TYPE_CONTROL, TYPE_UNKNOWN, TYPE_USER_DEFINED)
        if whole_match and token and vocab.get(token) == i:
            special = kind != TYPE_USER_DEFINED
            added.append(AddedToken(token, special=special, normalized=False))
    special_added = [t for t in added if t.special]
    if special_added:
        tok.add_special_tokens(special_added)
    if len(special_added) != len(added):
        tok.add_tokens([t for t in added if not t.special])

    add_bos = _flag(metadata, "tokenizer.ggml.add_bos_token", model == "llama")
    add_eos = _flag(metadata, "tokenizer.ggml.add_eos_token", False)
    post = _post_processor(tokens, bos_id, eos_id, add_bos, add_eos)
    if post is not None:
        tok.post_processor = post

    eot_ids = {i for i in (eot_id, eom_id) if i is not None}
    eot_ids |= {
        i for i, t in enumerate(tokens) if types[i] == TYPE_CONTROL and t in EOT_LIKE_TOKENS
    }
    if tok.get_vocab_size(with_added_tokens=True) != n:
        raise ValueError(f"GGUF vocabulary of {n} tokens built a tokenizer of a different size")
    return GGUFVocab(
        tokenizer=tok,
        model=model,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        unk_token_id=unk_id,
        pad_token_id=pad_id,
        add_bos_token=add_bos,
        add_eos_token=add_eos,
        eot_token_ids=frozenset(eot_ids),
        chat_templates=_chat_templates(metadata),
        double_leading_space=model == "llama" and _flag(metadata, _SPACE_PREFIX_KEY, True),
    )
