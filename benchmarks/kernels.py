"""Heron's CPU kernels on SmolLM2-135M's shapes: the packed (8-row; AVX2 or VNNI) layout
against the plain GGUF layout, what a step of 1-8 rows (a verify step) costs as it streams
every weight from memory, and what a verify step's attention costs per query token.

    .venv/bin/python -m benchmarks.kernels

Random weights with the model's shapes (30 layers of q/k/v 960x576, o 576x576, gate/up
3072x576, down 576x1536, all q4_1; the tied lm_head 49152x576 as q8_0). Attention: 9 query
heads over 3 KV heads of 64, an fp16 cache in 8-token blocks, a 700-token context, 30 layers.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

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

    # Rows through 30 layers of distinct weights and the lm_head: the bytes a decode step
    # streams from memory (too many for the caches); 2-8 rows are a verify step's.
    def pack(q: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
        return tuple(k.pack_q4_1(*q)) if k.has_packed() else q

    model = [
        [pack(k.quantize_q4_1(torch.randn(n, kk) * 0.05)) for n, kk in SHAPES]
        for _ in range(LAYERS)
    ]
    nbytes = sum(t.numel() * t.element_size() for layer in model for w in layer for t in w)
    nbytes += sum(t.numel() * t.element_size() for t in head)
    one = 0.0
    for m in (1, 2, 3, 4, 5, 8):
        xm = {kk: torch.randn(m, kk) for kk in (576, 1536)}

        def step(xm: dict[int, torch.Tensor] = xm) -> None:
            for layer in model:
                for (_, kk), w in zip(SHAPES, layer, strict=True):
                    k.linear_q4_1(xm[kk], *w, None)
            k.linear_q8_0(xm[576], *head, None)

        ms = _ms(step, 20)
        one = one or ms
        print(
            f"{m}-row pass over {nbytes / 1e6:.1f} MB: {ms:.2f} ms = {ms / one:.2f}x one row"
            f" ({nbytes / ms / 1e6:.1f} GB/s)"
        )
    _attention(k)


def _attention(k: Any) -> None:
    heads, kv_heads, dim, bs, ctx = 9, 3, 64, 8, 700
    g = torch.Generator().manual_seed(0)
    blocks = torch.randperm(1024, generator=g)[: (ctx + bs - 1) // bs + 1]
    kc = (torch.randn(1024, bs, kv_heads, dim, generator=g) * 0.5).half()
    vc = torch.randn(1024, bs, kv_heads, dim, generator=g).half()
    print(f"attention, {LAYERS} layers, {ctx}-token context | B tokens of one sequence | alone")
    for b in (1, 2, 5, 8):
        q = torch.randn(b, heads, dim, generator=g)
        table = blocks.unsqueeze(0).expand(b, -1).contiguous()
        lens = torch.arange(ctx - b + 1, ctx + 1)

        def verify(
            q: torch.Tensor = q, table: torch.Tensor = table, lens: torch.Tensor = lens
        ) -> None:
            for _ in range(LAYERS):
                k.paged_decode_attention(q, kc, vc, table, lens, 0.125, 0, 0.0)

        def alone(
            q: torch.Tensor = q, table: torch.Tensor = table, lens: torch.Tensor = lens
        ) -> None:
            for _ in range(LAYERS):
                for i in range(len(lens)):
                    k.paged_decode_attention(
                        q[i : i + 1], kc, vc, table[i : i + 1], lens[i : i + 1], 0.125, 0, 0.0
                    )

        print(f"B={b} | {_ms(verify, 5):6.2f} ms | {_ms(alone, 5):6.2f} ms")


if __name__ == "__main__":
    main()
