"""PEFT LoRA directories: ``adapter_config.json`` + ``adapter_model.safetensors``.

Each target's delta is ``scale * B @ A`` with ``scale = lora_alpha / r`` (rsLoRA:
``lora_alpha / sqrt(r)``), where ``r`` is that module's rank (``rank_pattern`` shows in the
tensor shapes) and ``lora_alpha`` may be overridden per module by ``alpha_pattern``. Variants
that change the math (DoRA, trained biases, ``modules_to_save``, layer replication,
``fan_in_fan_out``) are refused, not approximated.
"""

from __future__ import annotations

import json
import math
import os
import re
from typing import Any

import torch

from heron.config import ModelConfig
from heron.lora.targets import TARGET_PARENTS
from heron.lora.weights import LoRAError, LoRAWeights, RawModules, build_weights

CONFIG_FILE = "adapter_config.json"
WEIGHTS_FILE = "adapter_model.safetensors"
MAX_CONFIG_BYTES = 1 << 20
_TENSOR_RE = re.compile(r"(?:.*\.)?layers\.(\d+)\.(self_attn|mlp)\.(\w+)\.lora_([AB])\.weight")
# Settings that change the math; each must be off (falsy) for Heron to compute it exactly.
_REFUSED = {
    "use_dora": "DoRA",
    "modules_to_save": "modules_to_save",
    "layer_replication": "layer_replication",
    "fan_in_fan_out": "fan_in_fan_out",
    "lora_bias": "lora_bias",
}


def is_peft_dir(path: str) -> bool:
    return os.path.isdir(path) and os.path.isfile(os.path.join(path, CONFIG_FILE))


def load_peft(path: str, config: ModelConfig, max_rank: int) -> LoRAWeights:
    """Read and validate a PEFT LoRA directory for a base model with ``config``. Raises
    LoRAError for a missing or unreadable file, a setting Heron does not compute, an unknown
    tensor, or weights that do not fit (``build_weights``)."""
    settings = _read_config(path)
    alpha = _number(settings, "lora_alpha", path)
    alpha_pattern = settings.get("alpha_pattern") or {}
    if not isinstance(alpha_pattern, dict):
        raise LoRAError(f"{path}: alpha_pattern must be an object")
    rslora = bool(settings.get("use_rslora", False))
    raw: RawModules = {}
    for name, tensor in _read_tensors(path).items():
        m = _TENSOR_RE.fullmatch(name)
        if m is None or TARGET_PARENTS.get(m.group(3)) != m.group(2):
            raise LoRAError(f"{path}: tensor {name!r} is not a LoRA factor Heron can apply")
        layer, target, half = int(m.group(1)), m.group(3), m.group(4)
        a, b, _ = raw.get((layer, target), (None, None, 0.0))
        if half == "A":
            a = tensor
        else:
            b = tensor
        raw[(layer, target)] = (a, b, 0.0)
    for (layer, target), (a, b, _) in raw.items():
        rank = a.shape[0] if a is not None and a.dim() == 2 else 1
        key = f"model.layers.{layer}.{TARGET_PARENTS[target]}.{target}"
        module_alpha = _pattern_value(alpha_pattern, key, alpha, path)
        scale = module_alpha / (math.sqrt(rank) if rslora else rank)
        raw[(layer, target)] = (a, b, scale)
    return build_weights(path, raw, config, max_rank)


def _read_config(path: str) -> dict[str, Any]:
    file = os.path.join(path, CONFIG_FILE)
    try:
        with open(file, "rb") as f:
            text = f.read(MAX_CONFIG_BYTES + 1)
        if len(text) > MAX_CONFIG_BYTES:
            raise LoRAError(f"{file}: too large for an adapter config")
        settings = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise LoRAError(f"{file}: cannot read the adapter config: {exc}") from None
    if not isinstance(settings, dict):
        raise LoRAError(f"{file}: the adapter config is not a JSON object")
    peft_type = settings.get("peft_type", "LORA")
    if peft_type != "LORA":
        raise LoRAError(f"{path}: peft_type {peft_type!r} is not LORA")
    for key, what in _REFUSED.items():
        if settings.get(key):
            raise LoRAError(f"{path}: {what} adapters are not supported")
    if settings.get("bias", "none") != "none":
        raise LoRAError(
            f"{path}: adapters that train biases (bias={settings['bias']!r}) are not supported"
        )
    return settings


def _read_tensors(path: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    file = os.path.join(path, WEIGHTS_FILE)
    if not os.path.isfile(file):
        if os.path.exists(os.path.join(path, "adapter_model.bin")):
            raise LoRAError(f"{path}: only adapter_model.safetensors is read (not pickled .bin)")
        raise LoRAError(f"{path}: {WEIGHTS_FILE} is missing")
    try:
        return load_file(file)
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise LoRAError(f"{file}: cannot read the adapter weights: {exc}") from None


def _number(settings: dict[str, Any], key: str, path: str) -> float:
    value = settings.get(key)
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise LoRAError(f"{path}: {key} must be a positive number, got {value!r}")
    return float(value)


def _pattern_value(patterns: dict[str, Any], key: str, default: float, path: str) -> float:
    """PEFT's per-module override: the first pattern that matches the module name's tail."""
    for pattern, value in patterns.items():
        try:
            matched = re.match(rf"(.*\.)?({pattern})$", key)
        except re.error:
            raise LoRAError(f"{path}: alpha_pattern {pattern!r} is not a valid pattern") from None
        if matched:
            if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
                raise LoRAError(f"{path}: alpha_pattern {pattern!r} must be a positive number")
            return float(value)
    return default
