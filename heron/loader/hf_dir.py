"""HF checkpoint directories: ``config.json`` plus ``*.safetensors`` shards.

Only safetensors are read. Pickle checkpoints (``*.bin``, ``*.pt``) can run code when loaded, so
they are refused outright rather than passed to ``torch.load``.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from heron.config import ModelConfig

if TYPE_CHECKING:
    import torch

__all__ = ["CheckpointError", "iter_safetensors_weights", "load_hf_checkpoint"]

MAX_JSON_BYTES = 16 << 20
INDEX_FILE = "model.safetensors.index.json"
_PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")


class CheckpointError(ValueError):
    """A checkpoint path is missing, malformed or in a refused format; the message names it."""


def checkpoint_dir(path: str | os.PathLike[str]) -> Path:
    """``path`` as a ``Path`` after checking it is an existing directory."""
    d = Path(path)
    if not d.exists():
        raise CheckpointError(f"{d}: no such checkpoint directory")
    if not d.is_dir():
        raise CheckpointError(f"{d}: not a directory")
    return d


def _read_json(path: Path) -> dict[str, Any]:
    try:
        size = path.stat().st_size
        if size > MAX_JSON_BYTES:
            raise CheckpointError(f"{path}: {size} bytes, above the {MAX_JSON_BYTES} byte cap")
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise CheckpointError(f"{path}: missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{path}: unreadable JSON: {e}") from None
    if not isinstance(data, dict):
        raise CheckpointError(f"{path}: expected a JSON object")
    return data


def _token_ids(value: Any, where: Path) -> list[int]:
    """``eos_token_id`` may be absent, an int or a list of ints."""
    if value is None:
        return []
    items = value if isinstance(value, list) else [value]
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in items):
        raise CheckpointError(f"{where}: eos_token_id must be token ids, got {value!r}")
    return list(items)


def _rope(cfg: dict[str, Any]) -> tuple[float, dict[str, Any] | None]:
    """(rope_theta, rope_scaling) from the legacy ``rope_theta``/``rope_scaling`` keys or the
    newer ``rope_parameters`` (which also carries the theta)."""
    params = cfg.get("rope_parameters")
    if isinstance(params, dict) and params and all(isinstance(v, dict) for v in params.values()):
        # Per-layer-type parameters (sliding vs full attention): the full-attention set is the
        # model's main rope; the whole dict stays available in extra["hf_config"].
        params = params.get("full_attention") or next(iter(params.values()))
    scaling = cfg.get("rope_scaling")
    source = scaling if isinstance(scaling, dict) else params if isinstance(params, dict) else {}
    theta = cfg.get("rope_theta") or (params or {}).get("rope_theta") or 10000.0
    rope = {k: v for k, v in source.items() if k != "rope_theta"}
    if "type" in rope and "rope_type" not in rope:
        rope["rope_type"] = rope.pop("type")
    if not rope or rope == {"rope_type": "default"}:
        return float(theta), None
    return float(theta), rope


_LAYER_KEYS = (
    "layer_types",
    "sliding_window_pattern",
    "query_pre_attn_scalar",
    "attn_logit_softcapping",
    "final_logit_softcapping",
    "rope_local_base_freq",
)


def _layer_settings(cfg: dict[str, Any]) -> dict[str, Any]:
    """Per-layer-type attention settings (Gemma 3) for ``ModelConfig.extra``: the keys above
    when set, and the sliding layers' rope (``rope_parameters["sliding_attention"]``) as
    ``rope_local_base_freq`` plus ``rope_local_scaling``."""
    out = {k: cfg[k] for k in _LAYER_KEYS if cfg.get(k) is not None}
    if "sliding_window_pattern" not in out and cfg.get("_sliding_window_pattern") is not None:
        out["sliding_window_pattern"] = cfg["_sliding_window_pattern"]
    params = cfg.get("rope_parameters")
    local = params.get("sliding_attention") if isinstance(params, dict) else None
    if isinstance(local, dict):
        if local.get("rope_theta") is not None:
            out["rope_local_base_freq"] = local["rope_theta"]
        out["rope_local_scaling"] = {k: v for k, v in local.items() if k != "rope_theta"}
    return out


def load_hf_checkpoint(path: str | os.PathLike[str]) -> ModelConfig:
    """Build a ``ModelConfig`` from ``config.json`` (and ``generation_config.json`` eos ids)."""
    d = checkpoint_dir(path)
    where = d / "config.json"
    raw = _read_json(where)
    cfg = raw
    if "hidden_size" not in raw and isinstance(raw.get("text_config"), dict):
        cfg = raw["text_config"]  # multimodal wrapper: Heron serves the text model
    archs = raw.get("architectures")
    if not (isinstance(archs, list) and archs and isinstance(archs[0], str)):
        raise CheckpointError(f"{where}: missing 'architectures'")

    def req(key: str) -> Any:
        if key not in cfg:
            raise CheckpointError(f"{where}: missing {key!r}")
        return cfg[key]

    heads = req("num_attention_heads")
    hidden = req("hidden_size")
    head_dim: Any = cfg.get("head_dim")
    if head_dim is None and isinstance(hidden, int) and isinstance(heads, int) and heads > 0:
        head_dim = hidden // heads
    theta, rope_scaling = _rope(cfg)
    tied = cfg.get("tie_word_embeddings", raw.get("tie_word_embeddings"))
    if tied is None:  # absent: decide from the weights rather than a class default
        tied = "lm_head.weight" not in _tensor_names(d)
    eos = _token_ids(cfg.get("eos_token_id", raw.get("eos_token_id")), where)
    gen_path = d / "generation_config.json"
    if gen_path.is_file():
        for tid in _token_ids(_read_json(gen_path).get("eos_token_id"), gen_path):
            if tid not in eos:
                eos.append(tid)
    # Which layers the window applies to (layer_types, max_window_layers) is the model's call.
    sliding = cfg.get("sliding_window") if cfg.get("use_sliding_window", True) else None
    try:
        return ModelConfig(
            architecture=archs[0],
            vocab_size=req("vocab_size"),
            hidden_size=hidden,
            intermediate_size=req("intermediate_size"),
            num_hidden_layers=req("num_hidden_layers"),
            num_attention_heads=heads,
            num_key_value_heads=cfg.get("num_key_value_heads") or heads,
            head_dim=head_dim,
            max_position_embeddings=req("max_position_embeddings"),
            rms_norm_eps=float(cfg.get("rms_norm_eps") or cfg.get("layer_norm_eps") or 1e-6),
            rope_theta=theta,
            rope_scaling=rope_scaling,
            tie_word_embeddings=bool(tied),
            attention_bias=bool(cfg.get("attention_bias", False)),
            mlp_bias=bool(cfg.get("mlp_bias", False)),
            hidden_act=str(cfg.get("hidden_act") or cfg.get("hidden_activation") or "silu"),
            sliding_window=sliding,
            bos_token_id=cfg.get("bos_token_id", raw.get("bos_token_id")),
            eos_token_ids=eos,
            extra={
                "format": "hf",
                "model_type": cfg.get("model_type"),
                "hf_config": raw,
                **_layer_settings(cfg),
            },
        )
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"{where}: {e}") from None


def _weight_files(d: Path) -> tuple[list[Path], set[str] | None]:
    """Shard files to read, and the tensor names the index promises (None without an index)."""
    index_path = d / INDEX_FILE
    if index_path.is_file():
        weight_map = _read_json(index_path).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index_path}: missing 'weight_map'")
        shards: set[str] = set()
        for name, shard in weight_map.items():
            # Shard names come from the file: only plain names inside the directory.
            if (
                not isinstance(shard, str)
                or Path(shard).name != shard
                or shard.startswith(".")
                or not shard.endswith(".safetensors")
            ):
                raise CheckpointError(f"{index_path}: bad shard name {shard!r} for {name!r}")
            shards.add(shard)
        files = [d / s for s in sorted(shards)]
        for f in files:
            if not f.is_file():
                raise CheckpointError(f"{f}: shard listed in {INDEX_FILE} is missing")
        return files, set(weight_map)
    files = sorted(p for p in d.glob("*.safetensors") if p.is_file())
    if files:
        return files, None
    pickles = sorted(p.name for p in d.iterdir() if p.suffix in _PICKLE_SUFFIXES)
    if pickles:
        raise CheckpointError(
            f"{d}: refusing pickle checkpoint files {pickles[:3]} (loading them can run code); "
            "convert the checkpoint to safetensors"
        )
    raise CheckpointError(f"{d}: no *.safetensors weights found")


def _tensor_names(d: Path) -> set[str]:
    files, names = _weight_files(d)
    if names is not None:
        return names
    out: set[str] = set()
    for f in files:
        with _open(f) as sf:
            out.update(sf.keys())
    return out


def _open(f: Path) -> Any:
    from safetensors import safe_open  # with torch, only where tensors are read

    try:
        return safe_open(str(f), framework="pt")
    except Exception as e:  # safetensors raises its own error types for malformed headers
        raise CheckpointError(f"{f}: not a valid safetensors file: {e}") from None


def iter_safetensors_weights(path: str | os.PathLike[str]) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield ``(name, tensor)`` for every tensor of the checkpoint, shard by shard.

    Floating-point tensors are converted to float32; integer buffers are yielded unchanged.
    Raises ``CheckpointError`` for pickle-only directories, names appearing in two shards, or
    names the index lists but no shard holds.
    """
    d = checkpoint_dir(path)
    files, promised = _weight_files(d)
    seen: set[str] = set()
    for f in files:
        with _open(f) as sf:
            for name in sf.keys():
                if name in seen:
                    raise CheckpointError(f"{f}: tensor {name!r} appears in more than one shard")
                seen.add(name)
                tensor = sf.get_tensor(name)
                yield name, tensor.float() if tensor.is_floating_point() else tensor
    if promised is not None and promised - seen:
        missing = sorted(promised - seen)
        raise CheckpointError(f"{d}: tensors listed in {INDEX_FILE} are missing: {missing[:5]}")
