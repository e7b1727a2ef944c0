"""The pooling an HF checkpoint directory asks for, from sentence-transformers' files.

``modules.json`` lists the pipeline: a ``Transformer`` (the checkpoint in the directory
itself), a ``Pooling`` (its ``config.json`` in a subfolder such as ``1_Pooling``) and
optionally ``Normalize``. Other modules (``Dense``, ``LayerNorm``, ...) change the vectors in
ways Heron does not implement, so they are refused rather than skipped. Without
``modules.json`` the pooling is sentence-transformers' default for a plain checkpoint: mean,
not normalised.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from heron.layers.pooling import POOLING_MODES, PoolingConfig
from heron.loader.hf_dir import MAX_JSON_BYTES, CheckpointError

# sentence-transformers' legacy boolean keys, in its concatenation order
_LEGACY_KEYS = (
    ("pooling_mode_cls_token", "cls"),
    ("pooling_mode_max_tokens", "max"),
    ("pooling_mode_mean_tokens", "mean"),
    ("pooling_mode_mean_sqrt_len_tokens", "mean_sqrt_len_tokens"),
    ("pooling_mode_weightedmean_tokens", "weightedmean"),
    ("pooling_mode_lasttoken", "lasttoken"),
)


def _read(path: Path) -> Any:
    try:
        if path.stat().st_size > MAX_JSON_BYTES:
            raise CheckpointError(f"{path}: above the {MAX_JSON_BYTES} byte cap")
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable JSON: {e}") from None


def _module_kind(entry: Any, where: Path) -> tuple[str, str]:
    if not isinstance(entry, dict) or not isinstance(entry.get("type"), str):
        raise CheckpointError(f"{where}: each module needs a 'type'")
    sub = entry.get("path", "")
    if not isinstance(sub, str):
        raise CheckpointError(f"{where}: module path must be a string")
    return entry["type"].rsplit(".", 1)[-1], sub


def _pooling_modes(raw: Any, where: Path) -> tuple[str, ...]:
    if not isinstance(raw, dict):
        raise CheckpointError(f"{where}: expected a JSON object")
    if raw.get("include_prompt", True) is not True:
        raise CheckpointError(
            f"{where}: include_prompt=false (instruction prompts) is not supported"
        )
    mode = raw.get("pooling_mode")
    if mode is not None:  # the current format: a mode name or a list of them
        modes = (mode,) if isinstance(mode, str) else mode
        if not isinstance(modes, list | tuple) or not all(isinstance(m, str) for m in modes):
            raise CheckpointError(f"{where}: pooling_mode must be a name or a list of names")
        return tuple(modes)
    legacy = tuple(name for key, name in _LEGACY_KEYS if raw.get(key) is True)
    return legacy or ("mean",)


def load_pooling_config(path: str | os.PathLike[str]) -> PoolingConfig:
    """The pooling of the checkpoint directory ``path``. Raises CheckpointError for malformed
    files and for pipelines Heron cannot reproduce."""
    d = Path(path)
    modules_path = d / "modules.json"
    if not modules_path.is_file():
        return PoolingConfig(("mean",), normalize=False)
    modules = _read(modules_path)
    if not isinstance(modules, list):
        raise CheckpointError(f"{modules_path}: expected a list of modules")
    modes: tuple[str, ...] | None = None
    normalize = False
    for entry in modules:
        kind, sub = _module_kind(entry, modules_path)
        if kind == "Transformer":
            if sub not in ("", "."):
                raise CheckpointError(
                    f"{modules_path}: a Transformer in a subfolder ({sub!r}) is not supported"
                )
        elif kind == "Pooling":
            if modes is not None:
                raise CheckpointError(f"{modules_path}: more than one Pooling module")
            sub_dir = d / sub
            if Path(sub).name != sub or sub.startswith(".") or not sub_dir.is_dir():
                raise CheckpointError(f"{modules_path}: bad Pooling path {sub!r}")
            modes = _pooling_modes(_read(sub_dir / "config.json"), sub_dir / "config.json")
        elif kind == "Normalize":
            normalize = True
        else:
            raise CheckpointError(
                f"{modules_path}: sentence-transformers module {kind!r} is not supported "
                "(Heron runs Transformer, Pooling and Normalize)"
            )
    if modes is None:
        raise CheckpointError(f"{modules_path}: no Pooling module")
    unknown = [m for m in modes if m not in POOLING_MODES]
    if unknown:
        raise CheckpointError(f"{modules_path}: unsupported pooling mode(s) {unknown}")
    return PoolingConfig(modes, normalize)
