"""Heron's CPU linears on SmolLM2-135M's shapes: the packed (8-row, VNNI) layout against the
plain GGUF layout, and how fast one-row steps stream weights from memory.

    .venv/bin/python -m benchmarks.kernels

Random weights with the model's shapes (30 layers of q/k/v 960x576, o 576x576, gate/up
3072x576, down 576x1536, all q4_1; the tied lm_head 49152x576 as q8_0).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch

from heron.kernels import require_cpu_kernels

SHAPES = [(960, 576), (576, 576), (3072, 576), (576, 1536)]
LAYERS = 30
VOCAB, HIDDEN = 49152, 576


def _ms(fn: Callable[[], object], reps: int) -> float:
    for _ in range(3):
        fn()
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(reps):
            fn()
        runs.append((time.perf_counter() - t) / reps * 1e3)
    return statistics.median(runs)


def main() -> None:
    k = require_cpu_kernels()
    torch.manual_seed(0)
    plain = [k.quantize_q4_1(torch.randn(n, kk) * 0.05) for n, kk in SHAPES]
    head_plain = k.quantize_q8_0(torch.randn(VOCAB, HIDDEN) * 0.05)
    packed = [k.pack_q4_1(*q) for q in plain] if k.has_packed() else plain
    head = k.pack_q8_0(*head_plain) if k.has_packed() else head_plain
    print(f"packed layout available: {k.has_packed()}")
    print("rows | all q4_1 linears of 30 layers, plain -> packed | lm_head, plain -> packed")
    for m in (1, 4, 16, 64):
        xs = {kk: torch.randn(m, kk) for kk in (576, 1536)}

        def layers(ws: list[tuple[torch.Tensor, ...]], xs: dict[int, torch.Tensor] = xs) -> None:
            for (_, kk), w in zip(SHAPES, ws, strict=True):
                k.linear_q4_1(xs[kk], *w, None)

        x = xs[576]
        reps = max(3, 400 // m)
        a = _ms(lambda: layers(plain), reps) * LAYERS
        b = _ms(lambda: layers(packed), reps) * LAYERS
        c = _ms(lambda x=x: k.linear_q8_0(x, *head_plain, None), max(2, reps // 8))
        d = _ms(lambda x=x: k.linear_q8_0(x, *head, None), max(2, reps // 8))
        print(f"{m:4d} | {a:7.2f} -> {b:6.2f} ms | {c:6.2f} -> {d:5.2f} ms")

    # One row through 30 layers of distinct weights and the lm_head: the bytes a decode step
    # streams from memory (too many for the caches).
    def pack(q: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(k.pack_q4_1(*q)) if k.has_packed() else q

    model = [
        [pack(k.quantize_q4_1(torch.randn(n, kk) * 0.05)) for n, kk in SHAPES]
        for _ in range(LAYERS)
    ]
    x1 = {kk: torch.randn(1, kk) for kk in (576, 1536)}
    nbytes = sum(t.numel() * t.element_size() for layer in model for w in layer for t in w)
    nbytes += sum(t.numel() * t.element_size() for t in head)

    def step() -> None:
        for layer in model:
            for (_, kk), w in zip(SHAPES, layer, strict=True):
                k.linear_q4_1(x1[kk], *w, None)
        k.linear_q8_0(x1[576], *head, None)

    ms = _ms(step, 40)
    print(f"one-row pass over {nbytes / 1e6:.1f} MB: {ms:.2f} ms = {nbytes / ms / 1e6:.1f} GB/s")


if __name__ == "__main__":
    main()
