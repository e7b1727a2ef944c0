"""Prepared weights, cached once per checkpoint file.

Why: a GGUF model arrives as 4-bit blocks, the model files take float32, and the kernels
want their own blocks again. Preparing SmolLM2-135M (dequantize every tensor, copy it into
its parameter, choose and quantize each linear's kind, pack it for the ISA) took 3-4 s of a
6 s engine start. The result depends only on the file, the engine's dtype and quantization,
and the kernel level, so it is saved after the first load and mapped (``mmap``) on the next:
the model is then ready in about a tenth of a second.

The cache lives in ``$HERON_CACHE/weights`` (``~/.cache/heron/weights``), one
``<key>.pt`` per prepared model, read with ``torch.load(weights_only=True, mmap=True)``.
The key hashes the file's resolved path, size, mtime and inode (a changed file is a new
key), the settings above, torch's version, and the stats of Heron's code that prepares
weights (loader, models, layers, kernels, runner). At most ``MAX_ENTRIES`` files
are kept (least recently used go first). ``HERON_WEIGHT_CACHE=0`` turns it off.

Layout of one file: ``{"format": FORMAT, "params": {name: tensor}, "linears": {name:
(kind, [tensors])}, "counts": {kind: linears}}``. ``params`` holds every parameter by every name it has (a tied
embedding appears under both of its names, stored once); ``linears`` holds the kernels'
tensors of each quantized ``Linear``.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from heron.env import cache_dir, weight_cache_enabled
from heron.kernels import Kernels, kernels_isa
from heron.layers.linear import Linear

logger = logging.getLogger(__name__)

FORMAT = 1
MAX_ENTRIES = 8


def cache_root() -> Path:
    return cache_dir() / "weights"


def _fingerprint(source: Path) -> list[object]:
    """What identifies the checkpoint's bytes without reading them: a GGUF file's stat, or
    the stats of a model directory's files."""
    files = [source] if source.is_file() else sorted(p for p in source.iterdir() if p.is_file())
    out: list[object] = [str(source.resolve())]
    for f in files:
        st = f.stat()
        out += [f.name, st.st_size, st.st_mtime_ns, st.st_ino]
    return out


@functools.cache
def _code_fingerprint() -> list[object]:
    """Stats of the code that prepares weights, so that a changed loader, model file or
    kernel (a source checkout between two versions) never reads a stale entry."""
    package = Path(__file__).resolve().parent.parent
    out: list[object] = []
    for folder in ("loader", "models", "layers", "kernels", "runner"):
        for f in sorted((package / folder).glob("*.*")):
            if f.suffix in (".py", ".so"):
                st = f.stat()
                out += [f"{folder}/{f.name}", st.st_size, st.st_mtime_ns]
    return out


def cache_key(
    source: Path, dtype: str, quantization: str | None, kernels: Kernels | None
) -> str | None:
    """The cache file's name for these weights and settings; None when caching is off or
    the source cannot be identified."""
    if not weight_cache_enabled():
        return None
    try:
        fingerprint = _fingerprint(source)
    except OSError:
        return None
    packed = kernels is not None and kernels.has_packed()
    parts = [FORMAT, torch.__version__, _code_fingerprint(), fingerprint]
    parts += [dtype, quantization]
    parts += [kernels_isa() if kernels is not None else None, packed]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:40]


def load(model: torch.nn.Module, key: str, kernels: Kernels | None) -> dict[str, int] | None:
    """Fill ``model`` (built, not loaded) from the cache entry ``key``. Mutates its
    parameters and quantized linears. Returns the quantization counts as
    ``apply_quantization`` does, or None when there is no usable entry (nothing changed)."""
    path = cache_root() / f"{key}.pt"
    try:
        entry: dict[str, Any] = torch.load(path, mmap=True, weights_only=True)
    except FileNotFoundError:
        return None
    except Exception as exc:  # a truncated or foreign file: rebuild it
        logger.warning("ignoring the unreadable weight cache %s: %s", path, exc)
        return None
    if not _fits(model, entry, kernels):
        logger.warning("ignoring the weight cache %s: it does not fit this model", path)
        return None
    linears = dict(model.named_modules())
    for name, (kind, tensors) in entry["linears"].items():
        linear = linears[name]
        assert isinstance(linear, Linear) and kernels is not None
        linear.load_quantized(kind, tuple(tensors), kernels)
    for name, param in model.named_parameters(remove_duplicate=False):
        if name in entry["params"]:
            param.data = entry["params"][name]
    with contextlib.suppress(OSError):
        os.utime(path)  # least recently used goes first
    return dict(entry["counts"])


def _fits(model: torch.nn.Module, entry: dict[str, Any], kernels: Kernels | None) -> bool:
    if not isinstance(entry, dict) or entry.get("format") != FORMAT:
        return False
    modules = dict(model.named_modules())
    for name, (kind, _) in entry["linears"].items():
        if not isinstance(modules.get(name), Linear) or kernels is None or kind is None:
            return False
    params = dict(model.named_parameters(remove_duplicate=False))
    for name, param in params.items():
        owner = name.rsplit(".", 1)[0]
        if owner in entry["linears"] and name.endswith(".weight"):
            continue
        cached = entry["params"].get(name)
        if cached is None or cached.shape != param.shape:
            return False
    return True


def save(model: torch.nn.Module, key: str, counts: dict[str, int]) -> None:
    """Write ``model``'s prepared weights and ``apply_quantization``'s ``counts`` as entry
    ``key`` (atomically), then trim the cache to ``MAX_ENTRIES``. A failure (a full disk, a read-only home) only logs a warning."""
    root = cache_root()
    linears: dict[str, tuple[str, list[torch.Tensor]]] = {}
    for name, module in model.named_modules():
        if isinstance(module, Linear) and module.qweight:
            assert module.kind is not None
            linears[name] = (module.kind, list(module.qweight))
    params: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        owner = name.rsplit(".", 1)[0]
        if not (owner in linears and name.endswith(".weight")):
            params[name] = param.data
    entry = {"format": FORMAT, "params": params, "linears": linears, "counts": counts}
    try:
        root.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd, tmp = tempfile.mkstemp(dir=root, prefix=".tmp-", suffix=".pt")
        with os.fdopen(fd, "wb") as f:
            torch.save(entry, f)
        os.replace(tmp, root / f"{key}.pt")
    except OSError as exc:
        logger.warning("could not write the weight cache in %s: %s", root, exc)
        with contextlib.suppress(OSError, UnboundLocalError):
            os.unlink(tmp)
        return
    _trim(root)


def _trim(root: Path) -> None:
    entries = sorted(root.glob("*.pt"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[MAX_ENTRIES:]:
        with contextlib.suppress(OSError):
            old.unlink()
