"""BERT embeddings: all-MiniLM-L6-v2 (real weights from the store) against
sentence-transformers and transformers; pooling and its config files against
sentence-transformers' own Pooling module; a tiny random ``BertForMaskedLM`` checkpoint.

Measured on all-MiniLM-L6-v2 (fp32, CPU): cosine similarity to sentence-transformers >=
0.9999999 for every text of a mixed-length batch, max abs difference ~2e-7.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from heron import LLM
from heron.engine.embedder import EmbeddingEngine
from heron.layers.pooling import POOLING_MODES, PoolingConfig, pool
from heron.loader import CheckpointError, iter_safetensors_weights, load_hf_checkpoint
from heron.loader.pooling import load_pooling_config
from heron.models.registry import build_embedding_model, build_model
from heron.tokenizer.fit import fit_to_context

pytestmark = pytest.mark.slow

MIN_COSINE = 0.9999
TEXTS = [
    "hello world",
    "x",
    "",
    "A heron stands motionless in the shallow water, waiting for a fish to swim by. " * 6,
    "Embeddings map text to vectors; similar meanings land close together.",
    "Ünïcödé, emoji 🐦 and 中文字符 all go through WordPiece.",
    "The quick brown fox jumps over the lazy dog.",
]


@pytest.fixture(scope="module")
def minilm(pulled_model: Callable[[str], str]) -> str:
    return pulled_model("all-minilm")


@pytest.fixture(scope="module")
def llm(minilm: str) -> LLM:
    return LLM(minilm)


@pytest.fixture(scope="module")
def sentence_model(minilm: str) -> Any:
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(minilm, device="cpu")


def test_matches_sentence_transformers(llm: LLM, sentence_model: Any) -> None:
    ours = torch.tensor(llm.embed(TEXTS))  # one call: a padded batch of mixed lengths
    ref = sentence_model.encode(TEXTS, convert_to_tensor=True, batch_size=len(TEXTS))
    assert ours.shape == ref.shape == (len(TEXTS), 384)
    cosine = torch.nn.functional.cosine_similarity(ours, ref.float())
    assert cosine.min().item() >= MIN_COSINE, cosine.tolist()
    # modules.json lists Normalize: unit vectors, as the reference's
    assert torch.allclose(ours.norm(dim=1), torch.ones(len(TEXTS)), atol=1e-5)
    # each text alone gives its batched vector: padding never leaks into real tokens
    for text, batched in zip(TEXTS[:3], ours[:3], strict=True):
        alone = torch.tensor(llm.embed(text)[0])
        assert torch.allclose(alone, batched, atol=1e-5)


def test_tokens_and_hidden_states_match_transformers(minilm: str, llm: LLM) -> None:
    import transformers

    tok = transformers.AutoTokenizer.from_pretrained(minilm)
    ref_model = transformers.AutoModel.from_pretrained(minilm).eval()
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    ours = [llm.get_tokenizer().encode(t) for t in TEXTS]
    # tokenizer.json's fixed padding to 128 is not applied to single prompts
    assert ours == [[i for i, m in zip(ids, mask, strict=True) if m] for ids, mask in
                    zip(batch["input_ids"].tolist(), batch["attention_mask"].tolist(), strict=True)]  # fmt: skip
    engine = llm._embedder
    assert engine is not None
    ids, mask = batch["input_ids"], batch["attention_mask"].bool()
    with torch.inference_mode():
        hidden = engine.model(ids, mask)
        ref = ref_model(**batch).last_hidden_state
    assert (hidden - ref)[mask].abs().max().item() < 1e-4


def test_truncation(llm: LLM, minilm: str) -> None:
    import transformers

    engine = llm._embedder
    assert engine is not None and engine.max_model_len == 512
    long_text = "the heron waits " * 300  # ~900 tokens
    ids = engine.encode(long_text)
    ref = transformers.AutoTokenizer.from_pretrained(minilm)(
        long_text, truncation=True, max_length=512
    )["input_ids"]
    assert ids == ref and len(ids) == 512 and ids[-1] == 102  # ends with [SEP]
    assert len(llm.embed(long_text)[0]) == 384
    with pytest.raises(ValueError, match="exceeds maximum context length"):
        llm.embed(long_text, truncate=False)
    assert fit_to_context([1, 2, 3, 4], 3, True, suffix_len=1) == [1, 2, 4]
    assert fit_to_context([1, 2, 3], 3, False) == [1, 2, 3]


def test_embedding_model_does_not_generate(llm: LLM) -> None:
    with pytest.raises(ValueError, match="does not support generate"):
        llm.generate("hello")
    config = load_hf_checkpoint(llm._embedder.checkpoint.path)  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="does not support generate"):
        build_model(config)


def test_forward_groups_respect_the_token_budget(llm: LLM) -> None:
    engine = llm._embedder
    assert engine is not None
    batch = [[101] + [7592] * n + [102] for n in (3, 150, 10, 60, 1, 100)]
    budget = engine.token_budget
    assert engine.groups(batch) == [[4, 0, 2, 3, 5, 1]]  # by length; 6 x 152 tokens fit
    engine.token_budget = 160  # forces several forwards; results must not change
    try:
        groups = engine.groups(batch)
        split = torch.tensor(engine.embed_token_ids(batch))
    finally:
        engine.token_budget = budget
    assert groups == [[4, 0, 2], [3], [5], [1]]  # each within 160 padded tokens
    whole = torch.tensor(engine.embed_token_ids(batch))
    assert torch.allclose(split, whole, atol=1e-5)


# ------------------------------------------------------------------------- pooling
@pytest.mark.parametrize(
    "modes",
    [(m,) for m in POOLING_MODES] + [("cls", "max", "mean"), ("lasttoken", "mean")],
)
@pytest.mark.parametrize("normalize", [False, True])
def test_pooling_matches_sentence_transformers(modes: tuple[str, ...], normalize: bool) -> None:
    from sentence_transformers.sentence_transformer.modules import Normalize, Pooling

    torch.manual_seed(0)
    hidden = torch.randn(4, 9, 16)
    lengths = torch.tensor([9, 1, 5, 3])
    mask = torch.arange(9)[None, :] < lengths[:, None]  # right padding
    ref_pool = Pooling(16, pooling_mode=modes if len(modes) > 1 else modes[0])
    features = {"token_embeddings": hidden.clone(), "attention_mask": mask.long()}
    ref = ref_pool(features)["sentence_embedding"]
    if normalize:
        ref = Normalize()({"sentence_embedding": ref})["sentence_embedding"]
    ours = pool(hidden, mask, PoolingConfig(modes, normalize))
    assert ours.shape == (4, 16 * len(modes))
    assert torch.allclose(ours, ref, atol=1e-6)


def _write(d: Path, modules: list[dict[str, str]] | None, pooling: dict[str, Any]) -> Path:
    d.mkdir(parents=True, exist_ok=True)
    if modules is not None:
        (d / "modules.json").write_text(json.dumps(modules))
    (d / "1_Pooling").mkdir(exist_ok=True)
    (d / "1_Pooling" / "config.json").write_text(json.dumps(pooling))
    return d


ST = "sentence_transformers.models."
TRANSFORMER = {"idx": "0", "name": "0", "path": "", "type": ST + "Transformer"}
POOLING = {"idx": "1", "name": "1", "path": "1_Pooling", "type": ST + "Pooling"}
NORMALIZE = {"idx": "2", "name": "2", "path": "2_Normalize", "type": ST + "Normalize"}


def test_pooling_config_files(tmp_path: Path, minilm: str) -> None:
    assert load_pooling_config(minilm) == PoolingConfig(("mean",), normalize=True)
    legacy = {"word_embedding_dimension": 4, "pooling_mode_cls_token": True}
    assert load_pooling_config(
        _write(tmp_path / "a", [TRANSFORMER, POOLING], legacy)
    ) == PoolingConfig(("cls",), normalize=False)
    both = {"pooling_mode_mean_tokens": True, "pooling_mode_max_tokens": True}
    assert load_pooling_config(_write(tmp_path / "b", [TRANSFORMER, POOLING], both)).modes == (
        "max",
        "mean",
    )  # sentence-transformers' concatenation order
    current = {"embedding_dimension": 4, "pooling_mode": "lasttoken", "include_prompt": True}
    assert load_pooling_config(
        _write(tmp_path / "c", [TRANSFORMER, POOLING, NORMALIZE], current)
    ) == PoolingConfig(("lasttoken",), normalize=True)
    # no modules.json: sentence-transformers' default for a plain checkpoint
    assert load_pooling_config(_write(tmp_path / "d", None, {})) == PoolingConfig(("mean",))
    dense = {"idx": "2", "name": "2", "path": "2_Dense", "type": ST + "Dense"}
    with pytest.raises(CheckpointError, match="'Dense' is not supported"):
        load_pooling_config(_write(tmp_path / "e", [TRANSFORMER, POOLING, dense], legacy))
    with pytest.raises(CheckpointError, match="include_prompt"):
        load_pooling_config(
            _write(tmp_path / "f", [TRANSFORMER, POOLING], {"include_prompt": False})
        )
    escape = dict(POOLING, path="../1_Pooling")
    with pytest.raises(CheckpointError, match="bad Pooling path"):
        load_pooling_config(_write(tmp_path / "g", [TRANSFORMER, escape], legacy))


# --------------------------------------------------------------- BertForMaskedLM
def test_tiny_bert_for_masked_lm(tmp_path: Path) -> None:
    """A ``bert.``-prefixed checkpoint with an MLM head: the encoder loads, the head is
    skipped, and hidden states match transformers' encoder."""
    import transformers

    torch.manual_seed(0)
    config = transformers.BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
    )
    ref = transformers.BertForMaskedLM(config).eval()
    ref.save_pretrained(tmp_path)
    model = build_embedding_model(load_hf_checkpoint(tmp_path))
    model.load_weights(iter_safetensors_weights(tmp_path))
    ids = torch.randint(0, 99, (3, 12))
    mask = torch.arange(12)[None, :] < torch.tensor([12, 5, 8])[:, None]
    with torch.inference_mode():
        ours = model(ids, mask)
        theirs = ref.bert(input_ids=ids, attention_mask=mask.long()).last_hidden_state
    assert (ours - theirs)[mask].abs().max().item() < 1e-5


def test_engine_rejects_bad_inputs(llm: LLM) -> None:
    engine: EmbeddingEngine | None = llm._embedder
    assert engine is not None
    with pytest.raises(ValueError, match="empty"):
        engine.embed_token_ids([[101, 102], []])
    with pytest.raises(ValueError, match="token ids"):
        engine.embed_token_ids([[101, 10**6]])
    with pytest.raises(ValueError, match="context length"):
        engine.embed_token_ids([[101] * 513])
