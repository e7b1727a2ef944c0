"""Requests on different adapters and on the base model share steps: each gets the tokens
(and logits) it gets alone; more adapters than slots wait their turn and are swapped in."""

from __future__ import annotations

from pathlib import Path

import torch

from heron.lora import LoRARequest
from tests.lora.adapters import capture_logits, greedy, lora_llm, prompts


def test_batch_of_three_adapters_and_base_matches_each_alone(llama_set: dict[str, Path]) -> None:
    adapters = {
        name: LoRARequest(name, i + 1, str(llama_set[name]))
        for i, name in enumerate(["qv8", "all16", "mlp16"])
    }
    order = [None, "qv8", "all16", "mlp16", "qv8", None, "mlp16", "all16"]
    loras = [None if n is None else adapters[n] for n in order]
    ps = (prompts(4) + prompts(4, seed=2))[: len(order)]
    # two slots for three adapters: one adapter's requests wait for a slot, then swap in
    llm = lora_llm(llama_set["base"], max_loras=2, max_num_batched_tokens=64)
    per_step: list[set[int]] = []
    captured = capture_logits(llm)
    hook = llm.engine.runner.logits_hook
    assert hook is not None

    def spy(rows, logits):  # type: ignore[no-untyped-def]
        per_step.append({r.request.lora_request.int_id for r in rows if r.request.lora_request})
        hook(rows, logits)

    llm.engine.runner.logits_hook = spy
    batch = llm.generate([{"prompt_token_ids": p} for p in ps], greedy(), lora_request=loras)
    assert max(len(s) for s in per_step) == 2  # adapters mixed in a step, never over slots
    assert len(set().union(*per_step)) == 3

    alone = lora_llm(llama_set["base"], max_loras=1, enable_prefix_caching=False)
    alone_logits = capture_logits(alone)
    for prompt, lora, out in zip(ps, loras, batch, strict=True):
        (single,) = alone.generate([{"prompt_token_ids": prompt}], greedy(), lora_request=lora)
        assert out.outputs[0].token_ids == single.outputs[0].token_ids, lora
        ours = torch.stack(captured[out.request_id])
        theirs = torch.stack(alone_logits[single.request_id])
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=0)


def test_adapters_dropped_from_cpu_memory_reload(llama_set: dict[str, Path]) -> None:
    """One slot and one adapter in CPU memory: alternating adapters evict each other and
    load again from their files, with the same results."""
    llm = lora_llm(llama_set["base"], max_loras=1, max_cpu_loras=1)
    a = LoRARequest("qv8", 1, str(llama_set["qv8"]))
    b = LoRARequest("all16", 2, str(llama_set["all16"]))
    p = [{"prompt_token_ids": prompts(1)[0]}]
    first = llm.generate(p, greedy(), lora_request=a)[0].outputs[0].token_ids
    other = llm.generate(p, greedy(), lora_request=b)[0].outputs[0].token_ids
    manager = llm.engine.runner.lora
    assert manager is not None and [x.int_id for x in manager.adapters] == [2]
    both = llm.generate(p * 2, greedy(), lora_request=[a, b])
    assert [o.outputs[0].token_ids for o in both] == [first, other]
    assert first != other
