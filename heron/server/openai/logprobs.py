"""Logprobs in OpenAI's chat and legacy completion shapes, with each token's exact bytes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import lru_cache

from heron import __version__
from heron.outputs import Logprob
from heron.server.openai.protocol import (
    ChatChoiceLogprobs,
    CompletionLogprobs,
    TokenLogprob,
    TopLogprob,
)
from heron.tokenizer import Tokenizer

SYSTEM_FINGERPRINT = f"heron-{__version__}"
COMPLETIONS_DEFAULT_MAX_TOKENS = 16
SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
_DONE = "[DONE]"


# ------------------------------------------------------------------------- logprobs
@lru_cache(maxsize=1)
def _byte_alphabet() -> dict[str, int]:
    """Byte-level BPE spells each byte as one printable character: printable Latin-1 bytes
    as themselves, every other byte as chr(256 + k) in byte order. This inverts that."""
    printable = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    chars = {b: chr(b) for b in printable}
    k = 0
    for b in range(256):
        if b not in chars:
            chars[b] = chr(256 + k)
            k += 1
    return {c: b for b, c in chars.items()}


class TokenSpeller:
    """A token's text and exact UTF-8 bytes for logprobs. The bytes matter for tokens that
    hold part of a character, whose text is only U+FFFD."""

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tokenizer = tokenizer
        decoder = type(tokenizer.backend.decoder).__name__
        self.byte_level = decoder == "ByteLevel"
        self.bytes = lru_cache(maxsize=65536)(self._bytes)

    def text(self, token_id: int, lp: Logprob) -> str:
        if lp.decoded_token is not None:
            return lp.decoded_token
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def _bytes(self, token_id: int) -> list[int]:
        piece = self.tokenizer.id_to_token(token_id)
        if piece is None:
            return []
        if self.byte_level:
            alphabet = _byte_alphabet()
            if all(c in alphabet for c in piece):
                return [alphabet[c] for c in piece]
        elif len(piece) == 6 and piece.startswith("<0x") and piece.endswith(">"):
            try:
                return [int(piece[3:5], 16)]  # a SentencePiece byte-fallback token
            except ValueError:
                pass
        else:
            piece = piece.replace("\u2581", " ")
        return list(piece.encode("utf-8"))


def _by_rank(entry: Mapping[int, Logprob], k: int) -> list[tuple[int, Logprob]]:
    return sorted(((t, lp) for t, lp in entry.items() if lp.rank <= k), key=lambda x: x[1].rank)


def chat_logprobs(
    speller: TokenSpeller,
    token_ids: Sequence[int],
    entries: Sequence[Mapping[int, Logprob]] | None,
    top_k: int,
) -> ChatChoiceLogprobs:
    content = []
    for token_id, entry in zip(token_ids, entries or [], strict=False):
        chosen = entry[token_id]
        top = [
            TopLogprob(
                token=speller.text(t, lp), logprob=_finite(lp.logprob), bytes=speller.bytes(t)
            )
            for t, lp in _by_rank(entry, top_k)
        ]
        content.append(
            TokenLogprob(
                token=speller.text(token_id, chosen),
                logprob=_finite(chosen.logprob),
                bytes=speller.bytes(token_id),
                top_logprobs=top,
            )
        )
    return ChatChoiceLogprobs(content=content)


def completion_logprobs(
    speller: TokenSpeller,
    token_ids: Sequence[int],
    entries: Sequence[Mapping[int, Logprob]] | None,
    top_k: int,
    offset: int,
) -> tuple[CompletionLogprobs, int]:
    """The legacy shape; ``offset`` is where the first token's text starts. Returns the
    offset after the last token too, for the next chunk of a stream."""
    out = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
    for token_id, entry in zip(token_ids, entries or [], strict=False):
        chosen = entry[token_id]
        text = speller.text(token_id, chosen)
        top = {speller.text(t, lp): _finite(lp.logprob) for t, lp in _by_rank(entry, top_k)}
        top.setdefault(text, _finite(chosen.logprob))
        out.tokens.append(text)
        out.token_logprobs.append(_finite(chosen.logprob))
        out.top_logprobs.append(top)
        out.text_offset.append(offset)
        offset += len(text)
    return out, offset


def prompt_completion_logprobs(
    speller: TokenSpeller,
    prompt_ids: Sequence[int],
    entries: Sequence[Mapping[int, Logprob] | None] | None,
    top_k: int,
) -> tuple[CompletionLogprobs, int]:
    """The legacy shape for an echoed prompt (vLLM's prompt_logprobs): the first token has
    no context, so its logprob and alternatives are null. Returns the offset after the
    prompt's last token too, where the completion's logprobs go on."""
    out = CompletionLogprobs(tokens=[], token_logprobs=[], top_logprobs=[], text_offset=[])
    offset = 0
    for token_id, entry in zip(prompt_ids, entries or [], strict=False):
        if entry is None:
            text = speller.tokenizer.decode([token_id], skip_special_tokens=False)
            out.tokens.append(text)
            out.token_logprobs.append(None)
            out.top_logprobs.append(None)
            out.text_offset.append(offset)
            offset += len(text)
            continue
        one, offset = completion_logprobs(speller, [token_id], [entry], top_k, offset)
        out.tokens += one.tokens
        out.token_logprobs += one.token_logprobs
        out.top_logprobs += one.top_logprobs
        out.text_offset += one.text_offset
    return out, offset


def joined(first: CompletionLogprobs, second: CompletionLogprobs) -> CompletionLogprobs:
    """The prompt's logprobs followed by the completion's."""
    return CompletionLogprobs(
        tokens=first.tokens + second.tokens,
        token_logprobs=first.token_logprobs + second.token_logprobs,
        top_logprobs=first.top_logprobs + second.top_logprobs,
        text_offset=first.text_offset + second.text_offset,
    )


def _finite(x: float) -> float:
    # JSON has no -inf or NaN; a token the sampler could not pick gets -9999 instead.
    return x if x > -9999.0 else -9999.0
