"""The prepared-weights cache: a second load maps what the first prepared, with the same
output, and any change to the file, the settings or the entry itself means a fresh prepare."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from heron.config import EngineConfig
from heron.loader import load_checkpoint
from heron.runner import ModelRunner, weight_cache

pytestmark = pytest.mark.slow


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("HERON_CACHE", str(tmp_path / "cache"))
    return tmp_path / "cache" / "weights"


def runner(path: str | Path, quantization: str | None = "auto") -> ModelRunner:
    checkpoint = load_checkpoint(path)
    config = EngineConfig(quantization=quantization)
    return ModelRunner(checkpoint.config, checkpoint.weights, config, source=checkpoint.path)


def logits(r: ModelRunner) -> torch.Tensor:
    """Full-model logits of a short prompt, through the prepared weights."""
    ids = torch.tensor([1, 504, 3458, 282, 4649, 314], dtype=torch.long)
    model = r.model
    with torch.inference_mode():
        hidden = model.embed_tokens(ids)
        return model.compute_logits(hidden)


def test_second_load_maps_the_first_ones_weights(smollm2_path: str, cache: Path) -> None:
    first = runner(smollm2_path)
    entries = list(cache.glob("*.pt"))
    assert len(entries) == 1
    second = runner(smollm2_path)
    assert second.quantization == first.quantization == {"q4_1": 120, "q8_0": 1}
    a = dict(first.model.named_parameters(remove_duplicate=False))
    b = dict(second.model.named_parameters(remove_duplicate=False))
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    la = {n: m.qweight for n, m in first.model.named_modules() if getattr(m, "qweight", ())}
    lb = {n: m.qweight for n, m in second.model.named_modules() if getattr(m, "qweight", ())}
    assert la.keys() == lb.keys() and len(la) == 121
    for name in la:
        assert all(torch.equal(x, y) for x, y in zip(la[name], lb[name], strict=True)), name
    assert torch.equal(logits(first), logits(second))


def test_other_settings_or_a_touched_file_get_their_own_entry(
    smollm2_path: str, cache: Path, tmp_path: Path
) -> None:
    copy = tmp_path / "model.gguf"
    copy.write_bytes(Path(smollm2_path).read_bytes())
    runner(copy)
    runner(copy, quantization=None)
    assert len(list(cache.glob("*.pt"))) == 2
    stat = copy.stat()
    os.utime(copy, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    runner(copy)
    assert len(list(cache.glob("*.pt"))) == 3


def test_a_corrupt_entry_is_prepared_again(smollm2_path: str, cache: Path) -> None:
    good = logits(runner(smollm2_path))
    (entry,) = cache.glob("*.pt")
    entry.write_bytes(entry.read_bytes()[: 1 << 20])  # truncated
    again = runner(smollm2_path)
    assert torch.equal(logits(again), good)
    assert entry.stat().st_size > 1 << 20  # rewritten whole


def test_switched_off_writes_nothing(
    smollm2_path: str, cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HERON_WEIGHT_CACHE", "0")
    runner(smollm2_path)
    assert not cache.exists()


def test_the_cache_keeps_the_newest_entries(cache: Path) -> None:
    cache.mkdir(parents=True)
    for i in range(weight_cache.MAX_ENTRIES + 3):
        f = cache / f"{i:02d}.pt"
        f.write_bytes(b"x")
        os.utime(f, (1000 + i, 1000 + i))
    weight_cache._trim(cache)
    kept = sorted(p.name for p in cache.glob("*.pt"))
    assert kept == [f"{i:02d}.pt" for i in range(3, weight_cache.MAX_ENTRIES + 3)]
