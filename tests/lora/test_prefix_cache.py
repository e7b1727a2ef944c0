"""Cached KV blocks are keyed by the adapter's weights as well as the tokens: a prompt run
on one adapter never serves another adapter (or the base) from its blocks, and does serve
a later request on the same adapter (whatever name or int_id it arrives under)."""

from __future__ import annotations

import shutil
from pathlib import Path

from heron.lora import LoRARequest
from tests.lora.adapters import greedy, lora_llm


def test_blocks_are_keyed_by_adapter(llama_set: dict[str, Path], tmp_path: Path) -> None:
    llm = lora_llm(llama_set["base"], max_loras=2)
    blocks: dict[str, list[int]] = {}

    def hook(rows, logits):  # type: ignore[no-untyped-def]
        for row in rows:  # the first sampling row holds the whole prompt's blocks
            blocks.setdefault(row.request.request_id, list(row.block_ids))

    llm.engine.runner.logits_hook = hook
    prompt = [{"prompt_token_ids": list(range(40, 57))}]  # 17 tokens: 4 full blocks of 4
    copy = Path(shutil.copytree(llama_set["qv8"], tmp_path / "same-weights"))
    runs = [
        ("a", LoRARequest("qv8", 1, str(llama_set["qv8"]))),
        ("b", LoRARequest("all16", 2, str(llama_set["all16"]))),
        ("base", None),
        ("a again", LoRARequest("qv8", 1, str(llama_set["qv8"]))),
        ("a copy", LoRARequest("qv8-copy", 7, str(copy))),
    ]
    cached: dict[str, int] = {}
    ids: dict[str, list[int]] = {}
    for label, lora in runs:
        (out,) = llm.generate(prompt, greedy(2), lora_request=lora)
        cached[label] = out.num_cached_tokens
        ids[label] = blocks[out.request_id][:4]
    assert cached == {"a": 0, "b": 0, "base": 0, "a again": 16, "a copy": 16}
    assert ids["a again"] == ids["a"] and ids["a copy"] == ids["a"]
    for label in ("b", "base"):
        assert not set(ids[label]) & set(ids["a"]), label
    assert not set(ids["b"]) & set(ids["base"])
