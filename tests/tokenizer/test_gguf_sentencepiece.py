"""llama-kind (SentencePiece BPE) GGUF vocabularies, on a small synthetic vocabulary.

References: the `sentencepiece` library itself, given a model built from the same pieces, and
transformers' tokenizer loaded from the same GGUF file.

Documented difference: for text that starts with a space, transformers' GGUF tokenizer (its
`Metaspace` pre-tokenizer) adds no "\u2581" prefix, while SentencePiece (and so Heron) does:
"  and" is "\u2581\u2581\u2581and" in SentencePiece. Heron follows SentencePiece there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from heron.tokenizer import Tokenizer
from heron.tokenizer.gguf_vocab import derive_spm_merges

from .helpers import read_gguf_metadata, spm_metadata, spm_vocab

PLAIN_TEXTS = [
    "the world",
    "hello the cat is at sea",
    "xyz",  # no pieces for x, y, z: byte fallback
    "café",  # é is a piece; no merges reach it
    "日本 😀",  # 3- and 4-byte characters, all byte fallback
    "\nthe\tend.",
    "the  world  ",
    "aaaa  ",
    "hellohello the",
    "",
]
LEADING_SPACE_TEXTS = ["  and  in", " ", " the"]


@pytest.fixture(scope="module")
def spm_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import gguf as gguf
    import numpy as np

    tokens, scores, types = spm_vocab()
    path = tmp_path_factory.mktemp("spm") / "tiny-spm.gguf"
    writer = gguf.GGUFWriter(str(path), "llama")
    writer.add_block_count(1)
    writer.add_context_length(64)
    writer.add_embedding_length(8)
    writer.add_feed_forward_length(16)
    writer.add_head_count(2)
    writer.add_head_count_kv(2)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types(types)
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_unk_token_id(0)
    writer.add_tensor("token_embd.weight", np.zeros((len(tokens), 8), dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.fixture(scope="module")
def heron_spm(spm_gguf: Path) -> Tokenizer:
    return Tokenizer.from_gguf_metadata(read_gguf_metadata(spm_gguf))


@pytest.fixture(scope="module")
def hf_spm(spm_gguf: Path) -> Any:
    import transformers as transformers

    return transformers.AutoTokenizer.from_pretrained(str(spm_gguf.parent), gguf_file=spm_gguf.name)


@pytest.fixture(scope="module")
def sentencepiece_spm() -> Any:
    """The sentencepiece library running a BPE model with the same pieces (Llama's settings)."""
    import sentencepiece as spm
    import sentencepiece.sentencepiece_model_pb2 as pb

    model = pb.ModelProto()
    model.trainer_spec.model_type = pb.TrainerSpec.BPE
    model.trainer_spec.byte_fallback = True
    model.trainer_spec.unk_id, model.trainer_spec.bos_id = 0, 1
    model.trainer_spec.eos_id, model.trainer_spec.pad_id = 2, -1
    model.normalizer_spec.name = "identity"
    model.normalizer_spec.add_dummy_prefix = True
    model.normalizer_spec.remove_extra_whitespaces = False
    model.normalizer_spec.escape_whitespaces = True
    for token, score, kind in zip(*spm_vocab(), strict=True):
        piece = model.pieces.add()
        piece.piece, piece.score, piece.type = token, score, kind
    return spm.SentencePieceProcessor(model_proto=model.SerializeToString())


@pytest.mark.parametrize("text", PLAIN_TEXTS + LEADING_SPACE_TEXTS)
def test_encode_matches_sentencepiece(
    heron_spm: Tokenizer, sentencepiece_spm: Any, text: str
) -> None:
    assert heron_spm.encode(text, add_special_tokens=False) == sentencepiece_spm.encode(text)
    ids = heron_spm.encode(text)
    assert ids[:1] == [1]  # llama vocabularies add bos unless the metadata says otherwise
    assert heron_spm.decode(ids) == sentencepiece_spm.decode(ids[1:]) == text


@pytest.mark.slow
@pytest.mark.parametrize(
    "text", [*PLAIN_TEXTS, "<s>the", "the</s> cat", "the<|user|>cat", "<|user|> is"]
)
def test_encode_matches_transformers(heron_spm: Tokenizer, hf_spm: Any, text: str) -> None:
    assert heron_spm.encode(text) == hf_spm.encode(text)
    assert heron_spm.encode(text, add_special_tokens=False) == hf_spm.encode(
        text, add_special_tokens=False
    )
    ids = heron_spm.encode(text)
    assert heron_spm.decode(ids) == hf_spm.decode(ids, skip_special_tokens=True)


@pytest.mark.slow
@pytest.mark.parametrize("text", LEADING_SPACE_TEXTS)
def test_leading_space_differs_from_transformers_as_documented(
    heron_spm: Tokenizer, hf_spm: Any, text: str
) -> None:
    ours = heron_spm.encode(text, add_special_tokens=False)
    theirs = hf_spm.encode(text, add_special_tokens=False)
    # Heron has exactly one more "\u2581" (the SentencePiece prefix) in front.
    ours_text = "".join(heron_spm.id_to_token(i) or "" for i in ours)
    theirs_text = "".join(heron_spm.id_to_token(i) or "" for i in theirs)
    assert ours_text == "\u2581" + theirs_text


def test_byte_fallback_and_pieces(heron_spm: Tokenizer) -> None:
    ids = heron_spm.encode("the xé", add_special_tokens=False)
    tokens = [heron_spm.id_to_token(i) for i in ids]
    assert tokens == ["\u2581the", "\u2581", "<0x78>", "é"]


def test_special_and_user_defined_tokens(heron_spm: Tokenizer) -> None:
    user_id = heron_spm.token_to_id("<|user|>")
    # No prefix after a special token, as in HF tokenizers (llama.cpp would write "\u2581the").
    after_bos = heron_spm.encode("<s>the", add_special_tokens=False)
    assert [heron_spm.id_to_token(i) for i in after_bos] == ["<s>", "t", "he"]
    assert user_id in heron_spm.encode("a<|user|>b")
    assert user_id not in heron_spm.all_special_ids  # user-defined: matched whole, still decoded
    assert heron_spm.decode(heron_spm.encode("the<|user|>cat")) == "the<|user|>cat"
    assert heron_spm.all_special_ids == frozenset({0, 1, 2})


def test_no_space_prefix_and_add_eos() -> None:
    tok = Tokenizer.from_gguf_metadata(
        spm_metadata(
            **{
                "tokenizer.ggml.add_space_prefix": False,
                "tokenizer.ggml.add_bos_token": False,
                "tokenizer.ggml.add_eos_token": True,
            }
        )
    )
    ids = tok.encode("the cat")
    assert [tok.id_to_token(i) for i in ids] == ["t", "he", "\u2581cat", "</s>"]
    assert tok.decode(ids) == "the cat"


def test_derived_merges_rank_by_score() -> None:
    tokens, scores, types = spm_vocab()
    merges = derive_spm_merges(tokens, scores, types)
    assert merges[0] == ("\u2581", "t")  # "\u2581t" has the best score
    assert ("\u2581t", "he") in merges and ("\u2581", "the") not in merges  # no "the" piece
    # Byte, control and user-defined tokens never take part.
    assert all("<" not in left + right for left, right in merges)
