"""IncrementalDetokenizer: deltas add up to a full decode, never split a character, stay cheap."""

from __future__ import annotations

import random
from collections.abc import Sequence

import pytest

from heron.tokenizer import IncrementalDetokenizer, Tokenizer

from .helpers import spm_metadata

TEXTS = [
    "Hello 😀 world 👨\u200d👩\u200d👧 done",
    "你好，世界！这是一个测试。日本語のテキスト",
    "mixed: café → naïve ∑ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 🇫🇷🇯🇵 end",
    "<|im_start|>assistant\n答案是 42 🎉<|im_end|>",
]


def stream(detok: IncrementalDetokenizer, ids: Sequence[int], chunks: Sequence[int]) -> list[str]:
    deltas: list[str] = []
    pos = 0
    for size in chunks:
        deltas.append(detok.add(list(ids[pos : pos + size])))
        pos += size
    deltas.append(detok.add(list(ids[pos:])))
    return deltas


@pytest.mark.parametrize("text", TEXTS)
@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_one_token_at_a_time(smollm2: Tokenizer, text: str, skip_special_tokens: bool) -> None:
    ids = smollm2.encode(text)
    detok = IncrementalDetokenizer(smollm2, skip_special_tokens=skip_special_tokens)
    deltas = stream(detok, ids, [1] * len(ids))
    assert "".join(deltas) == smollm2.decode(ids, skip_special_tokens=skip_special_tokens)
    assert detok.text == "".join(deltas)
    assert not any("\ufffd" in d for d in deltas)
    assert detok.flush() == ""


def test_texts_really_split_characters(smollm2: Tokenizer) -> None:
    # Guard for the tests above: some single tokens are partial UTF-8 characters.
    partial = [i for t in TEXTS for i in smollm2.encode(t) if "\ufffd" in smollm2.decode([i])]
    assert len(partial) > 5


@pytest.mark.parametrize("seed", range(5))
def test_random_chunks(smollm2: Tokenizer, seed: int) -> None:
    rng = random.Random(seed)
    ids = smollm2.encode(" ".join(TEXTS))
    chunks = [rng.randint(0, 4) for _ in range(len(ids) // 2)]
    detok = IncrementalDetokenizer(smollm2)
    deltas = stream(detok, ids, chunks)
    assert "".join(deltas) == smollm2.decode(ids)
    assert not any("\ufffd" in d for d in deltas)


def test_decodes_a_small_window(smollm2: Tokenizer, monkeypatch: pytest.MonkeyPatch) -> None:
    ids = smollm2.encode(" ".join(TEXTS) * 20)
    assert len(ids) > 1000
    lengths: list[int] = []
    decode = smollm2.decode

    def spy(token_ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        lengths.append(len(token_ids))
        return decode(token_ids, skip_special_tokens)

    monkeypatch.setattr(smollm2, "decode", spy)
    detok = IncrementalDetokenizer(smollm2)
    for i in ids:
        detok.add([i])
    monkeypatch.undo()
    assert detok.text == smollm2.decode(ids)
    assert max(lengths) <= 8  # a window, not the whole sequence


@pytest.fixture(scope="module")
def spm() -> Tokenizer:
    return Tokenizer.from_gguf_metadata(spm_metadata())


def test_sentencepiece_byte_fallback(spm: Tokenizer) -> None:
    text = "the 日本 cat 😀"
    ids = spm.encode(text)
    detok = IncrementalDetokenizer(spm)
    deltas = stream(detok, ids, [1] * len(ids))
    assert "".join(deltas) == spm.decode(ids) == text
    assert not any("\ufffd" in d for d in deltas)
    assert deltas.count("") >= 5  # held back while a character's bytes arrive


def test_sentencepiece_space_after_skipped_special(spm: Tokenizer) -> None:
    ids = spm.encode("the", add_special_tokens=False) + [2] + spm.encode("world")
    for skip in (True, False):
        detok = IncrementalDetokenizer(spm, skip_special_tokens=skip)
        deltas = stream(detok, ids, [1] * len(ids))
        assert "".join(deltas) == spm.decode(ids, skip_special_tokens=skip)


def test_invalid_bytes_are_flushed(spm: Tokenizer) -> None:
    lead_byte = spm.token_to_id("<0xE4>")
    assert lead_byte is not None
    ids = spm.encode("the", add_special_tokens=False) + [lead_byte]
    detok = IncrementalDetokenizer(spm)
    assert detok.add(ids) == "the"  # "the" is out; the lone lead byte is held
    assert detok.num_held_tokens == 1
    assert detok.flush() == "\ufffd"
    assert detok.text == spm.decode(ids)


def test_long_invalid_run_is_not_held_forever(spm: Tokenizer) -> None:
    continuation = spm.token_to_id("<0x80>")
    assert continuation is not None
    detok = IncrementalDetokenizer(spm)
    emitted = "".join(detok.add([continuation]) for _ in range(20))
    assert emitted  # past MAX_HELD_TOKENS the replacement characters are real
    assert emitted + detok.flush() == spm.decode([continuation] * 20)
