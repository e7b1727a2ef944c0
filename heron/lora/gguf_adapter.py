"""llama.cpp's GGUF LoRA files (what Ollama's ``ADAPTER`` takes).

The header says ``general.type = "adapter"``, ``adapter.type = "lora"`` and the scale's
numerator ``adapter.lora.alpha``; each target is a pair ``blk.N.<name>.weight.lora_a``
[rank, in] and ``.lora_b`` [out, rank] under llama.cpp's tensor names. Its delta is
``alpha / rank * B @ A`` (``alpha`` 0: scale 1), as llama.cpp computes it. Llama-layout
converters interleave Q/K rows for GPT-J style rope; ``lora_b`` of those is put back in HF
order like the base weights. The file is read with Heron's hardened GGUF reader.
"""

from __future__ import annotations

import re

import torch

from heron.config import ModelConfig
from heron.loader.gguf import GGUFError, GGUFFile
from heron.loader.gguf_model import _ROPE_PERMUTED, GGUF_ARCHITECTURES, _unpermute_rope, hf_name
from heron.lora.weights import LoRAError, LoRAWeights, RawModules, build_weights

_TENSOR_RE = re.compile(r"(blk\.\d+\.\w+\.weight)\.lora_([ab])")
_HF_RE = re.compile(r"model\.layers\.(\d+)\.(?:self_attn|mlp)\.(\w+)\.weight")
# Architectures whose layers are the same modules (a Mistral base may come as "llama").
_SAME_LAYOUT = {"MistralForCausalLM": "LlamaForCausalLM"}


def is_gguf_file(path: str) -> bool:
    try:
        with open(path, "rb") as f:
            return f.read(4) == b"GGUF"
    except OSError:
        return False


def load_gguf_adapter(path: str, config: ModelConfig, max_rank: int) -> LoRAWeights:
    """Read and validate a GGUF LoRA file for a base model with ``config``. Raises LoRAError
    for a malformed file, one that is not a LoRA adapter, an architecture other than the
    base's, an unknown tensor, or weights that do not fit (``build_weights``)."""
    try:
        with GGUFFile(path) as g:
            arch, alpha = _check_header(g, config)
            raw: RawModules = {}
            for name in g.tensors:
                layer, target, half, tensor = _read_factor(g, arch, name, config)
                a, b, _ = raw.get((layer, target), (None, None, 0.0))
                raw[(layer, target)] = (tensor, b, 0.0) if half == "a" else (a, tensor, 0.0)
    except GGUFError as exc:
        raise LoRAError(f"cannot read the GGUF adapter: {exc}") from None
    for key, (a, b, _) in raw.items():
        rank = a.shape[0] if a is not None and a.dim() == 2 else 1
        raw[key] = (a, b, alpha / rank if alpha else 1.0)
    return build_weights(path, raw, config, max_rank)


def _check_header(g: GGUFFile, config: ModelConfig) -> tuple[str, float]:
    """(llama.cpp architecture, alpha) of an adapter that fits ``config``'s model."""
    meta = g.metadata
    if meta.get("general.type") != "adapter" or meta.get("adapter.type") != "lora":
        raise LoRAError(f"{g.path}: not a LoRA adapter (general.type / adapter.type)")
    arch = g.architecture or ""
    family = GGUF_ARCHITECTURES.get(arch)
    base = _SAME_LAYOUT.get(config.architecture, config.architecture)
    if family is None or _SAME_LAYOUT.get(family, family) != base:
        raise LoRAError(
            f"{g.path}: an adapter for {arch!r} does not fit a {config.architecture} base model"
        )
    alpha = meta.get("adapter.lora.alpha", 0.0)
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or alpha < 0:
        raise LoRAError(f"{g.path}: adapter.lora.alpha must be a non-negative number")
    return arch, float(alpha)


def _read_factor(
    g: GGUFFile, arch: str, name: str, config: ModelConfig
) -> tuple[int, str, str, torch.Tensor]:
    """(layer, HF target, "a" or "b", float32 factor) of one adapter tensor."""
    m = _TENSOR_RE.fullmatch(name)
    hf = None
    if m is not None:
        try:
            hf = hf_name(arch, m.group(1))
        except KeyError:
            hf = None
    hm = _HF_RE.fullmatch(hf or "")
    if m is None or hm is None:
        raise LoRAError(f"{g.path}: tensor {name!r} is not a LoRA factor Heron can apply")
    layer, target, half = int(hm.group(1)), hm.group(2), m.group(2)
    tensor = g.load(name)
    if half == "b" and arch in _ROPE_PERMUTED and tensor.dim() == 2:
        heads = {"q_proj": config.num_attention_heads, "k_proj": config.num_key_value_heads}
        n = heads.get(target)
        if n is not None and tensor.shape[0] % (2 * n) == 0:
            tensor = _unpermute_rope(tensor, n)
    return layer, target, half, tensor
