"""Tokenizer.from_hf_dir: tokenizer.json + tokenizer_config.json (+ chat template files)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from heron.prompt import ChatRenderer
from heron.tokenizer import Tokenizer

from .helpers import spm_metadata

MESSAGES = [{"role": "user", "content": "hi"}]


@pytest.mark.slow
def test_saved_transformers_tokenizer_matches_gguf(
    tmp_path: Path, smollm2: Tokenizer, hf_smollm2: Any
) -> None:
    hf_smollm2.save_pretrained(tmp_path)
    tok = Tokenizer.from_hf_dir(tmp_path)
    assert (tok.bos_token_id, tok.eos_token_id, tok.pad_token_id) == (1, 2, 2)
    assert tok.eos_token_ids == smollm2.eos_token_ids
    assert tok.all_special_ids == smollm2.all_special_ids
    assert tok.vocab_size == smollm2.vocab_size
    for text in ["Hello 12345 😀 你好", "<|im_start|>user\nhi<|im_end|>", "  x\n\n"]:
        assert tok.encode(text) == smollm2.encode(text)
    assert tok.chat_template == smollm2.chat_template
    assert ChatRenderer(tok).encode(MESSAGES) == ChatRenderer(smollm2).encode(MESSAGES)


def write_dir(path: Path, config: dict[str, Any], **files: Any) -> Path:
    Tokenizer.from_gguf_metadata(spm_metadata()).backend.save(str(path / "tokenizer.json"))
    (path / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    for name, content in files.items():
        target = path / name.replace("__", "/")
        target.parent.mkdir(parents=True, exist_ok=True)
        text = content if isinstance(content, str) else json.dumps(content)
        target.write_text(text, encoding="utf-8")
    return path


def test_config_fields(tmp_path: Path) -> None:
    config = {
        "bos_token": {"content": "<s>", "special": True},
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "added_tokens_decoder": {
            "304": {"content": "<tool>", "special": True},
            "305": {"content": "<think>", "special": False},
        },
        "chat_template": [
            {"name": "default", "template": "D{{ bos_token }}{{ messages[0].content }}"},
            {"name": "tool_use", "template": "T{{ tools | length }}"},
        ],
    }
    tok = Tokenizer.from_hf_dir(
        write_dir(tmp_path, config, **{"generation_config.json": {"eos_token_id": [2, 305]}})
    )
    assert (tok.bos_token_id, tok.eos_token_id, tok.unk_token_id) == (1, 2, 0)
    assert tok.eos_token_ids == frozenset({2, 305})
    assert tok.token_to_id("<tool>") == 304 and 304 in tok.all_special_ids
    assert tok.token_to_id("<think>") == 305 and 305 not in tok.all_special_ids
    assert tok.encode("a<tool>b", add_special_tokens=False)[1] == 304
    assert ChatRenderer(tok).render(MESSAGES) == "D<s>hi"
    assert ChatRenderer(tok).render(MESSAGES, tools=[{}]) == "T1"
    assert tok.chat_templates.keys() == {"default", "tool_use"}


def test_chat_template_jinja_file_wins(tmp_path: Path) -> None:
    config = {"chat_template": "old", "eos_token": "</s>"}
    files = {
        "chat_template.jinja": "new {{ eos_token }}",
        "additional_chat_templates__rag.jinja": "rag",
    }
    tok = Tokenizer.from_hf_dir(write_dir(tmp_path, config, **files))
    assert tok.chat_template == "new {{ eos_token }}"
    assert ChatRenderer(tok).render(MESSAGES) == "new </s>"
    assert ChatRenderer(tok).render(MESSAGES, template_name="rag") == "rag"
    with pytest.raises(ValueError, match="no chat template named 'nope'"):
        ChatRenderer(tok).render(MESSAGES, template_name="nope")


def test_missing_tokenizer_json(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="no tokenizer.json"):
        Tokenizer.from_hf_dir(tmp_path)
