"""Steps with adapted rows stay on the fused decode path (``heron.kernels.fused``), whose
kernels add each row's adapter delta: the numbers are the layer-by-layer path's bit for bit,
for a batch mixing adapters (of different ranks and targets) and the base model."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from heron.lora import LoRARequest
from tests.lora.adapters import capture_logits, greedy, lora_llm, prompts


class _CountingStack:
    """The fused decoder's kernel stack, counting the runs that carried adapter slots."""

    def __init__(self, stack: Any) -> None:
        self.stack = stack
        self.adapted = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stack, name)

    def run(self, *args: Any) -> None:
        self.adapted += len(args) == 7 and bool((args[6] >= 0).any())
        self.stack.run(*args)


def test_adapted_steps_run_fused_with_the_layered_numbers(llama_set: dict[str, Path]) -> None:
    names = ["qv8", "all16", "mlp16"]
    adapters = [LoRARequest(n, i + 1, str(llama_set[n])) for i, n in enumerate(names)]
    loras = [None, adapters[0], adapters[1], adapters[2], adapters[1], None]
    ps = [{"prompt_token_ids": p} for p in prompts(4) + prompts(2, seed=3)]

    fused = lora_llm(llama_set["base"], max_loras=3)
    runner = fused.engine.runner
    assert runner.lora is not None and runner.model.fused is not None
    counting = _CountingStack(runner.model.fused._stack)
    runner.model.fused._stack = counting
    fused_logits = capture_logits(fused)
    fused_out = fused.generate(ps, greedy(), lora_request=loras)
    assert counting.adapted > 0  # prefill chunks and decodes with adapters ran fused

    layered = lora_llm(llama_set["base"], max_loras=3)
    lrunner = layered.engine.runner
    assert lrunner.lora is not None
    lrunner.model.fused = None  # every step layer by layer, LoRALinear adding the deltas
    lrunner.lora.bind(None)
    layered_logits = capture_logits(layered)
    layered_out = layered.generate(ps, greedy(), lora_request=loras)

    for a, b in zip(fused_out, layered_out, strict=True):
        assert a.outputs[0].token_ids == b.outputs[0].token_ids
        ours = torch.stack(fused_logits[a.request_id])
        theirs = torch.stack(layered_logits[b.request_id])
        assert torch.equal(ours, theirs)
