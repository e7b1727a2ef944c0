"""The kernels' LoRA delta (``lora_add_``): each adapted row gets ``(x @ A[s]) @ B[s]`` of its
own slot, with numbers that depend neither on the thread count, nor on the rest of the batch,
nor on the ISA level (every output one fixed-order float32 sum, products and adds apart), from
float32 or float16 slot weights."""

from __future__ import annotations

from types import ModuleType

import pytest
import torch

from heron.kernels import available_isas, load_isa

MAX_RANK = 16


def _slots(
    k: int, cols: list[tuple[int, int]], ranks: list[int], seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Slot tensors of one linear with ``len(cols)`` rank blocks (block i covers output
    columns cols[i] = (first, count)), slot s holding rank ranks[s] (0: empty) in each."""
    g = torch.Generator().manual_seed(seed)
    blocks, n = len(cols), max(c0 + c for c0, c in cols)
    r = blocks * MAX_RANK
    a = torch.zeros(len(ranks), k, r)
    b = torch.zeros(len(ranks), r, n)
    spans = torch.zeros(len(ranks), blocks, 3, dtype=torch.long)
    for s, rank in enumerate(ranks):
        for blk, (c0, c) in enumerate(cols):
            if rank == 0:
                continue
            lo = blk * MAX_RANK
            a[s, :, lo : lo + rank] = torch.randn(k, rank, generator=g) * 0.1
            b[s, lo : lo + rank, c0 : c0 + c] = torch.randn(rank, c, generator=g) * 0.1
            spans[s, blk] = torch.tensor([rank, c0, c])
    return a, b, spans


# q/k/v-like blocks (one of them with a column count off the vector width) and one block
QKV = [(0, 96), (96, 37), (133, 37)]
ONE = [(0, 200)]


def _reference(y: torch.Tensor, x: torch.Tensor, a: torch.Tensor, b: torch.Tensor,
               token_slots: torch.Tensor) -> torch.Tensor:  # fmt: skip
    out = y.double().clone()
    for t, s in enumerate(token_slots.tolist()):
        if s >= 0:
            out[t] += (x[t].double() @ a[s].double()) @ b[s].double()
    return out


@pytest.mark.parametrize("cols", [QKV, ONE])
def test_each_row_gets_its_own_slots_delta(
    kernels: ModuleType, cols: list[tuple[int, int]]
) -> None:
    a, b, spans = _slots(64, cols, [16, 8, 0, 5])
    g = torch.Generator().manual_seed(1)
    slots = torch.tensor([0, -1, 1, 3, 0, 0, 0, 0, 0, 2, 1, -1, 3, 0])
    x = torch.randn(len(slots), 64, generator=g)
    y = torch.randn(len(slots), b.shape[2], generator=g)
    want = _reference(y, x, a, b, slots)
    kernels.lora_add_(y, x, a, b, spans, slots)
    torch.testing.assert_close(y.double(), want, atol=1e-5, rtol=1e-5)
    # rows of the base model, and rows of an empty slot, are left exactly as they were
    torch.testing.assert_close(y[slots < 0], want[slots < 0].float(), atol=0, rtol=0)


def test_no_adapted_rows_change_nothing(kernels: ModuleType) -> None:
    a, b, spans = _slots(64, ONE, [16])
    x, y = torch.randn(3, 64), torch.randn(3, 200)
    before = y.clone()
    kernels.lora_add_(y, x, a, b, spans, torch.full((3,), -1, dtype=torch.long))
    assert torch.equal(y, before)


def test_bad_inputs_are_errors(kernels: ModuleType) -> None:
    a, b, spans = _slots(64, ONE, [16, 16])
    x, y = torch.randn(2, 64), torch.randn(2, 200)
    with pytest.raises(RuntimeError, match="past the 2 adapter slots"):
        kernels.lora_add_(y, x, a, b, spans, torch.tensor([0, 2]))
    with pytest.raises(RuntimeError, match="do not fit"):
        kernels.lora_add_(torch.randn(2, 199), x, a, b, spans, torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="token_slots"):
        kernels.lora_add_(y, x, a, b, spans, torch.tensor([0]))
    with pytest.raises(RuntimeError, match="both float32 or both float16"):
        kernels.lora_add_(y, x, a.half(), b, spans, torch.tensor([0, 1]))
    with pytest.raises(RuntimeError, match="both float32 or both float16"):
        kernels.lora_add_(y, x, a.double(), b.double(), spans, torch.tensor([0, 1]))
    bad = spans.clone()
    bad[1, 0, 0] = MAX_RANK + 1
    with pytest.raises(RuntimeError, match="spans out of range"):
        kernels.lora_add_(y, x, a, b, bad, torch.tensor([0, 1]))


def _big_case() -> tuple[torch.Tensor, ...]:
    """Enough work that the kernel splits it over threads: 24 rows over 4 slots."""
    a, b, spans = _slots(576, [(0, 576), (576, 192), (768, 192)], [16, 16, 8, 16], seed=3)
    g = torch.Generator().manual_seed(4)
    slots = torch.tensor([i % 5 - 1 for i in range(24)])
    return torch.randn(24, 576, generator=g), torch.randn(24, 960, generator=g), a, b, spans, slots


def test_numbers_do_not_depend_on_threads_or_batch(kernels: ModuleType) -> None:
    x, y0, a, b, spans, slots = _big_case()
    threads = torch.get_num_threads()
    outs = []
    try:
        for n in (1, 2, 3):
            torch.set_num_threads(n)
            y = y0.clone()
            kernels.lora_add_(y, x, a, b, spans, slots)
            outs.append(y)
    finally:
        torch.set_num_threads(threads)
    assert torch.equal(outs[0], outs[1]) and torch.equal(outs[0], outs[2])
    for t in range(len(slots)):  # each row alone
        alone = y0[t : t + 1].clone()
        kernels.lora_add_(alone, x[t : t + 1], a, b, spans, slots[t : t + 1])
        assert torch.equal(alone[0], outs[0][t]), t


@pytest.mark.parametrize("cols", [QKV, ONE])
def test_float16_slots_compute_exactly_their_float32_widening(
    kernels: ModuleType, cols: list[tuple[int, int]]
) -> None:
    """float16 slots are only a storage format: every weight widens to float32 exactly and
    the sums are the float32 kernel's, bit for bit (one row, a tile of four, and a mix)."""
    a, b, spans = _slots(64, cols, [16, 8, 0, 5])
    a16, b16 = a.half(), b.half()
    for slots in (torch.tensor([1]), torch.tensor([0, 0, 0, 0, 0]), torch.tensor([0, -1, 3, 1])):
        x = torch.randn(len(slots), 64)
        y16 = torch.randn(len(slots), b.shape[2])
        y32 = y16.clone()
        kernels.lora_add_(y16, x, a16, b16, spans, slots)
        kernels.lora_add_(y32, x, a16.float(), b16.float(), spans, slots)
        assert torch.equal(y16, y32)


LEVELS = available_isas()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_every_isa_level_gives_the_same_numbers(dtype: torch.dtype) -> None:
    if len(LEVELS) < 2:
        pytest.skip("this CPU runs one level only")
    x, y0, a, b, spans, slots = _big_case()
    a, b = a.to(dtype), b.to(dtype)
    outs = {}
    for name in LEVELS:
        y = y0.clone()
        load_isa(name).lora_add_(y, x, a, b, spans, slots)
        outs[name] = y
    first = outs[LEVELS[0]]
    for name, y in outs.items():
        assert torch.equal(y, first), name
