"""The fused decode path: bit for bit what the same model computes layer by layer, bound to
whatever KV cache the runner hands it, and refused where a layer has more math."""

from __future__ import annotations

from dataclasses import fields
from types import ModuleType

import pytest
import torch

from heron.attention import AttentionBackend, AttentionBatch, get_attention_backend
from heron.config import ModelConfig
from heron.kernels import attach_kernels
from heron.kernels.fused import FusedDecoder, FusedLayerWeights, bind_fused_decoder
from heron.layers.linear import Linear
from heron.models.base import CausalLM
from heron.models.llama import LlamaForCausalLM
from heron.models.mistral import MistralForCausalLM
from heron.models.qwen3 import Qwen3ForCausalLM

BLOCK_SIZE, NUM_BLOCKS = 4, 16


def _config(arch: str, **overrides: object) -> ModelConfig:
    base: dict[str, object] = {
        "architecture": arch,
        "vocab_size": 50,
        "hidden_size": 64,
        "intermediate_size": 96,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 128,
        "rms_norm_eps": 1e-5,
    }
    return ModelConfig(**{**base, **overrides})  # type: ignore[arg-type]


def _model(cls: type[LlamaForCausalLM], kernels: ModuleType, **overrides: object) -> CausalLM:
    model = cls(_config(cls.__name__, **overrides))
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g) * 0.2
            p.copy_(noise + 1 if name.endswith("norm.weight") else noise)
    attach_kernels(model, kernels)
    return model.eval()


def _cache(model: CausalLM, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    c = model.config  # type: ignore[union-attr]
    shape = (c.num_hidden_layers, 2, NUM_BLOCKS, BLOCK_SIZE, c.num_key_value_heads, c.head_dim)
    return torch.zeros(shape, dtype=dtype)


def _steps() -> list[tuple[list[int], list[int]]]:
    """(start, num_tokens) of two sequences per step: prefill chunks, then decodes."""
    return [([0, 0], [5, 3]), ([5, 3], [4, 1]), ([9, 4], [1, 1]), ([10, 5], [1, 1])]


def _backend(name: str, kernels: ModuleType) -> AttentionBackend:
    """The named backend, the ``cpu`` one on ``kernels`` (the ISA level under test) rather than
    on the level ``cpu_kernels()`` chose."""
    backend = get_attention_backend(name)
    if hasattr(backend, "kernels"):
        backend.kernels = kernels
    return backend


def _run(model: CausalLM, kv: torch.Tensor, backend_name: str = "cpu") -> list[torch.Tensor]:
    backend = _backend(backend_name, model.layers[0].mlp.kernels)
    tables = [[0, 1, 2, 3], [4, 5, 6, 7]]
    outs = []
    g = torch.Generator().manual_seed(1)
    for starts, counts in _steps():
        order = sorted(range(2), key=lambda i: counts[i] != 1)  # decodes first
        positions = torch.cat([torch.arange(starts[i], starts[i] + counts[i]) for i in order])
        slots = torch.cat(
            [
                torch.tensor(tables[i])[p // BLOCK_SIZE] * BLOCK_SIZE + p % BLOCK_SIZE
                for i, p in ((i, torch.arange(starts[i], starts[i] + counts[i])) for i in order)
            ]
        )
        batch = AttentionBatch(
            query_lens=[counts[i] for i in order],
            context_lens=[starts[i] + counts[i] for i in order],
            block_tables=[tables[i] for i in order],
            num_decodes=sum(counts[i] == 1 for i in order),
            slot_mapping=slots,
            block_size=BLOCK_SIZE,
        )
        ids = torch.randint(0, 50, (len(positions),), generator=g)
        with torch.inference_mode():
            outs.append(model(ids, positions, kv, backend, backend.prepare_metadata(batch)))
    return outs


def _fused_and_layered(model: CausalLM, dtype: torch.dtype = torch.float32) -> None:
    kv_fused, kv_layers = _cache(model, dtype), _cache(model, dtype)
    kernels = model.layers[0].mlp.kernels
    model.fused = bind_fused_decoder(model, kv_fused, _backend("cpu", kernels), kernels)
    assert isinstance(model.fused, FusedDecoder)
    fused = _run(model, kv_fused)
    model.fused = None
    layered = _run(model, kv_layers)
    for a, b in zip(fused, layered, strict=True):
        assert torch.equal(a, b)
    assert torch.equal(kv_fused, kv_layers)


@pytest.mark.parametrize("cache_dtype", [torch.float32, torch.float16])
def test_fused_steps_equal_the_layer_by_layer_path(
    kernels: ModuleType, cache_dtype: torch.dtype
) -> None:
    _fused_and_layered(_model(LlamaForCausalLM, kernels), cache_dtype)


@pytest.mark.parametrize("kind", ["q4_1", "q8_0"])
def test_fused_quantized_linears_equal_the_layer_by_layer_path(
    kernels: ModuleType, kind: str
) -> None:
    model = _model(LlamaForCausalLM, kernels)
    for m in model.modules():
        if isinstance(m, Linear) and m is not model.lm_head:
            m.quantize(kind, kernels)
    _fused_and_layered(model)


def test_fused_biases_and_windows_equal_the_layer_by_layer_path(kernels: ModuleType) -> None:
    _fused_and_layered(_model(LlamaForCausalLM, kernels, attention_bias=True, mlp_bias=True))
    _fused_and_layered(_model(MistralForCausalLM, kernels, sliding_window=3))


def test_weights_have_the_kernels_field_names(kernels: ModuleType) -> None:
    names = tuple(f.name for f in fields(FusedLayerWeights))
    assert names == tuple(kernels.LayerWeights.field_names())
    assert not hasattr(FusedLayerWeights(*([None] * len(names))), "__dict__")  # slotted
    with pytest.raises(RuntimeError, match="unknown linear kind"):
        kernels.LinearWeights("int8", [torch.zeros(2, 2)], None)
    with pytest.raises(RuntimeError, match="takes 3 tensors"):
        kernels.LinearWeights("q4_1", [torch.zeros(2, 2)], None)


def test_a_new_cache_is_bound_explicitly(kernels: ModuleType) -> None:
    model = _model(LlamaForCausalLM, kernels)
    backend = _backend("cpu", kernels)
    first, second = _cache(model), _cache(model)
    model.fused = bind_fused_decoder(model, first, backend, kernels)
    model.fused = bind_fused_decoder(model, second, backend, kernels)
    _run(model, second)
    assert second.abs().sum() > 0 and first.abs().sum() == 0


def test_where_the_fused_path_does_not_apply(kernels: ModuleType) -> None:
    llama = _model(LlamaForCausalLM, kernels)
    cpu, torch_ref = _backend("cpu", kernels), get_attention_backend("torch")
    assert bind_fused_decoder(llama, _cache(llama), cpu, None) is None  # no kernels
    assert bind_fused_decoder(llama, _cache(llama), torch_ref, kernels) is None
    assert bind_fused_decoder(llama, _cache(llama, torch.bfloat16), cpu, kernels) is None
    qwen3 = _model(Qwen3ForCausalLM, kernels)  # q/k norms: a hook beyond the plain layer
    assert qwen3.describe_layers() is None
    assert bind_fused_decoder(qwen3, _cache(qwen3), cpu, kernels) is None
    gelu = _model(LlamaForCausalLM, kernels, hidden_act="gelu_pytorch_tanh")
    assert bind_fused_decoder(gelu, _cache(gelu), cpu, kernels) is None
    llama.layers[1].mlp.down_proj.quantize("int8")
    assert bind_fused_decoder(llama, _cache(llama), cpu, kernels) is None
