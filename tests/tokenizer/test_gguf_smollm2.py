"""SmolLM2 (gpt2-kind byte-level BPE, pre="smollm"): Heron against transformers on one GGUF."""

from __future__ import annotations

from typing import Any

import pytest

from heron.prompt import ChatRenderer
from heron.tokenizer import Tokenizer
from heron.tokenizer.gguf_vocab import PRE_TOKENIZER_SPLITS

TEXTS = [
    "Hello, world!",
    "12345",
    "Pi is 3.14159, and 1,000,000 > 999.",
    "def square(x):\n    return x ** 2  # comment\n",
    "    indented\n\t\ttabs\r\nwindows line",
    "😀👍🏽 emoji, and a family 👨\u200d👩\u200d👧",
    "你好，世界！こんにちは 안녕하세요",
    "Ünïcödé façade naïve Ελληνικά и русский",
    "whitespace   runs      here  ",
    "\n\n\nnewlines\n\n",
    "<|im_start|>user\nhi<|im_end|>",
    "<|im_start|>system\nYou are helpful.<|im_end|>\n<|im_start|>assistant\n",
    "<|endoftext|><repo_name>heron<file_sep>",
    "I'm sure we'll see they've DONE it",
    "URL: https://example.com/a?b=c&d=e#frag",
    '{"json": [1, 2, {"k": null}], "s": "x\\ny"}',
    "",
    " leading space and trailing ",
    "mixed12abc34 v2.0.1",
    "zero\u200bwidth \ufeffbom and <|im_start| partial",
    "a" * 300,
]

CONVERSATIONS: list[list[dict[str, str]]] = [
    [{"role": "user", "content": "What is 2+2?"}],
    [
        {"role": "system", "content": "You are Heron, a terse assistant."},
        {"role": "user", "content": "Name a bird."},
    ],
    [
        {"role": "user", "content": "Hi 👋"},
        {"role": "assistant", "content": "Hello! 你好"},
        {"role": "user", "content": "Write code:\n```py\nprint(1)\n```"},
    ],
]

pytestmark = pytest.mark.slow


def test_metadata_is_read(smollm2: Tokenizer) -> None:
    assert smollm2.vocab_size == 49152
    assert smollm2.bos_token_id == 1
    assert smollm2.eos_token_id == 2
    assert smollm2.id_to_token(2) == "<|im_end|>"
    # <|endoftext|> is an end-of-turn control token, so generation stops on it too.
    assert smollm2.eos_token_ids == frozenset({0, 2})
    assert set(range(17)) == set(smollm2.all_special_ids)
    assert smollm2.add_bos_token is False


@pytest.mark.parametrize("text", TEXTS)
def test_encode_matches_transformers(smollm2: Tokenizer, hf_smollm2: Any, text: str) -> None:
    ids = smollm2.encode(text)
    assert ids == hf_smollm2.encode(text, add_special_tokens=True)
    assert smollm2.encode(text, add_special_tokens=False) == ids  # add_bos_token is False


@pytest.mark.parametrize("text", TEXTS)
def test_decode_round_trips(smollm2: Tokenizer, hf_smollm2: Any, text: str) -> None:
    ids = smollm2.encode(text)
    assert smollm2.decode(ids, skip_special_tokens=False) == text
    assert smollm2.decode(ids) == hf_smollm2.decode(ids, skip_special_tokens=True)


def test_special_tokens_are_single_ids(smollm2: Tokenizer) -> None:
    assert smollm2.encode("<|im_start|>user\nhi<|im_end|>")[0] == 1
    assert smollm2.encode("<|im_end|>") == [2]
    assert smollm2.decode([1, 4093, 2]) == "user"


def test_digits_split_one_by_one(smollm2: Tokenizer) -> None:
    # pre="smollm" isolates every digit before BPE, as the model was trained.
    pre = smollm2.backend.pre_tokenizer
    assert pre is not None
    pieces = [p for p, _ in pre.pre_tokenize_str("ab 2024")]
    assert pieces == ["ab", "Ġ", "2", "0", "2", "4"]


@pytest.mark.parametrize("conversation", CONVERSATIONS)
@pytest.mark.parametrize("add_generation_prompt", [True, False])
def test_chat_template_matches_transformers(
    smollm2: Tokenizer,
    hf_smollm2: Any,
    conversation: list[dict[str, str]],
    add_generation_prompt: bool,
) -> None:
    renderer = ChatRenderer(smollm2)
    ours = renderer.render(conversation, add_generation_prompt=add_generation_prompt)
    theirs = hf_smollm2.apply_chat_template(
        conversation, tokenize=False, add_generation_prompt=add_generation_prompt
    )
    assert ours == theirs
    ids = renderer.encode(conversation, add_generation_prompt=add_generation_prompt)
    assert ids == hf_smollm2.encode(theirs, add_special_tokens=False)
    assert ids.count(1) == theirs.count("<|im_start|>")  # bos is <|im_start|>: never doubled


def test_unknown_pre_tokenizer_warns_and_works(
    smollm2_metadata: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    metadata = dict(smollm2_metadata, **{"tokenizer.ggml.pre": "made-up-pre"})
    with caplog.at_level("WARNING"):
        tok = Tokenizer.from_gguf_metadata(metadata)
    assert "made-up-pre" in caplog.text
    assert tok.decode(tok.encode("hello world")) == "hello world"


@pytest.mark.parametrize(
    ("pre", "text", "pieces"),
    [
        ("default", "ab 12345", ["ab", " 12345"]),
        ("smollm", "ab 12345", ["ab", " ", "1", "2", "3", "4", "5"]),
        ("llama-bpe", "ab 12345", ["ab", " ", "123", "45"]),
        ("qwen2", "ab 12345", ["ab", " ", "1", "2", "3", "4", "5"]),
        ("llama3", "I'M ok\n\n x", ["I", "'M", " ok", "\n\n", " x"]),
    ],
)
def test_pre_tokenizer_splits(pre: str, text: str, pieces: list[str]) -> None:
    from tokenizers import Regex, pre_tokenizers

    steps = [pre_tokenizers.Split(Regex(p), behavior="isolated") for p in PRE_TOKENIZER_SPLITS[pre]]
    got = [p for p, _ in pre_tokenizers.Sequence(steps).pre_tokenize_str(text)]
    assert got == pieces


def test_long_texts_encode_alike_through_the_batch_call(smollm2: Tokenizer) -> None:
    """Past LONG_TEXT_CHARS the encoder takes the backend's batch call (it releases the GIL);
    the ids are the same as the single-text call's."""
    from heron.tokenizer.tokenizer import LONG_TEXT_CHARS

    text = " Héron<|im_start|> naïve 🐦 tokens, " * (LONG_TEXT_CHARS // 20)
    assert len(text) > LONG_TEXT_CHARS
    shown = " " + text if smollm2._double_leading_space else text
    for special in (True, False):
        single = smollm2._backend.encode(shown, add_special_tokens=special).ids
        assert smollm2.encode(text, add_special_tokens=special) == single
