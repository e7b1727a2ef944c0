"""Tiny random Gemma 3 (transformers' own Gemma3ForCausalLM, saved as safetensors) against
transformers, through the paged cache with chunked prefill and prefix caching on.

The config exercises what sets Gemma 3 apart: sliding layers (window 8, shorter than most
prompts) interleaved with global ones, a local rope base beside a linearly scaled global rope,
``query_pre_attn_scalar`` different from ``head_dim``, non-zero ``(1 + w)`` norm weights,
q/k norms, GELU-tanh, tied embeddings; and, in the ``softcap`` variant, attention and final
logit soft-capping. Every sampled step's logits must be within ATOL of transformers'
teacher-forced logits (both fp32; only summation order differs).

NOTE(heron): transformers' Gemma3 attention never passes ``attn_logit_softcapping`` on to its
attention function, so for the ``softcap`` variant the reference runs with an eager attention
registered here that applies it (the Gemma 2 formula); ``final_logit_softcapping`` is applied
by the reference class itself.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from heron import LLM, SamplingParams
from tests.models.tiny import VOCAB, save_byte_tokenizer

pytestmark = pytest.mark.slow

ATOL = 1e-4
NEW_TOKENS = 12
WINDOW = 8
SOFTCAPS = {"plain": (None, None), "softcap": (2.0, 5.0)}
ROPE = {
    "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 1e6},
    "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
}


def build_gemma3(
    directory: Path, attn_softcap: float | None, final_softcap: float | None, **overrides: Any
) -> Path:
    """Save a seeded tiny Gemma 3 with a byte tokenizer to ``directory``."""
    import transformers

    settings: dict[str, Any] = {
        "vocab_size": VOCAB,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "head_dim": 16,
        "max_position_embeddings": 512,
        "rms_norm_eps": 1e-6,
        "bos_token_id": 256,
        "eos_token_id": 257,
        "pad_token_id": 0,
        "sliding_window": WINDOW,
        "layer_types": [
            "sliding_attention",
            "full_attention",
            "sliding_attention",
            "sliding_attention",
        ],
        "query_pre_attn_scalar": 24,
        "rope_parameters": ROPE,
        "attn_logit_softcapping": attn_softcap,
        "final_logit_softcapping": final_softcap,
        "tie_word_embeddings": True,
    }
    cfg = transformers.Gemma3TextConfig(**{**settings, **overrides})
    torch.manual_seed(0)
    model = transformers.Gemma3ForCausalLM(cfg).eval()
    with torch.no_grad():  # widen the random init; norms get weights away from 0 so 1 + w shows
        for p in model.parameters():
            p.normal_(0.0, 0.2) if p.dim() > 1 else p.uniform_(-0.5, 0.5)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    save_byte_tokenizer(directory)
    return directory


def reference_model(path: Path, softcapped: bool) -> Any:
    from transformers import AttentionInterface, AutoModelForCausalLM
    from transformers.masking_utils import AttentionMaskInterface, eager_mask
    from transformers.models.gemma3 import modeling_gemma3

    if not softcapped:
        return AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32).eval()

    def capped(module: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["softcap"] = module.attn_logit_softcapping
        return modeling_gemma3.eager_attention_forward(module, *args, **kwargs)

    AttentionInterface.register("heron_eager_softcap", capped)
    AttentionMaskInterface.register("heron_eager_softcap", eager_mask)
    return AutoModelForCausalLM.from_pretrained(
        str(path), dtype=torch.float32, attn_implementation="heron_eager_softcap"
    ).eval()


def prompts() -> list[list[int]]:
    g = torch.Generator().manual_seed(1)
    shared = torch.randint(0, 256, (20,), generator=g).tolist()
    lens = [3, 17, 40, 9, 33]
    out = [torch.randint(0, 256, (n,), generator=g).tolist() for n in lens]
    # two prompts share a 20-token prefix so that prefix caching hits
    return out + [shared + [1, 2, 3], shared + [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15]]


def write_gguf(hf_dir: Path, path: Path) -> Path:
    """Convert a tiny Gemma 3 checkpoint to a ``gemma3`` GGUF the way converters do: GGUF tensor
    names, norm weights stored as 1 + w, settings as ``gemma3.*`` keys (the layer pattern as one
    bool per layer, True for sliding) and a byte-token SentencePiece-style vocabulary."""
    import gguf
    from safetensors.torch import load_file

    cfg = json.loads((hf_dir / "config.json").read_text())
    w = load_file(str(hf_dir / "model.safetensors"))
    names = {
        "input_layernorm": "attn_norm",
        "post_attention_layernorm": "post_attention_norm",
        "pre_feedforward_layernorm": "ffn_norm",
        "post_feedforward_layernorm": "post_ffw_norm",
        "self_attn.q_proj": "attn_q",
        "self_attn.k_proj": "attn_k",
        "self_attn.v_proj": "attn_v",
        "self_attn.o_proj": "attn_output",
        "self_attn.q_norm": "attn_q_norm",
        "self_attn.k_norm": "attn_k_norm",
        "mlp.gate_proj": "ffn_gate",
        "mlp.up_proj": "ffn_up",
        "mlp.down_proj": "ffn_down",
    }
    writer = gguf.GGUFWriter(str(path), "gemma3")
    a = "gemma3."
    for key, value in (
        ("context_length", cfg["max_position_embeddings"]),
        ("embedding_length", cfg["hidden_size"]),
        ("block_count", cfg["num_hidden_layers"]),
        ("feed_forward_length", cfg["intermediate_size"]),
        ("attention.head_count", cfg["num_attention_heads"]),
        ("attention.head_count_kv", cfg["num_key_value_heads"]),
        ("attention.key_length", cfg["head_dim"]),
        ("attention.value_length", cfg["head_dim"]),
        ("attention.sliding_window", cfg["sliding_window"]),
    ):
        writer.add_uint32(a + key, value)
    rope = cfg["rope_parameters"]
    writer.add_float32(a + "attention.layer_norm_rms_epsilon", cfg["rms_norm_eps"])
    writer.add_float32(a + "rope.freq_base", rope["full_attention"]["rope_theta"])
    writer.add_float32(a + "rope.freq_base_swa", rope["sliding_attention"]["rope_theta"])
    writer.add_string(a + "rope.scaling.type", rope["full_attention"]["rope_type"])
    writer.add_float32(a + "rope.scaling.factor", rope["full_attention"]["factor"])
    writer.add_float32(a + "attn_logit_softcapping", cfg["attn_logit_softcapping"])
    writer.add_float32(a + "final_logit_softcapping", cfg["final_logit_softcapping"])
    pattern = [t == "sliding_attention" for t in cfg["layer_types"]]
    writer.add_array(a + "attention.sliding_window_pattern", pattern)
    writer.add_string("tokenizer.ggml.model", "llama")
    writer.add_array(
        "tokenizer.ggml.tokens", [f"<0x{b:02X}>" for b in range(256)] + ["<s>", "</s>"]
    )
    writer.add_array("tokenizer.ggml.scores", [0.0] * VOCAB)
    writer.add_array("tokenizer.ggml.token_type", [6] * 256 + [3, 3])  # byte, control
    writer.add_uint32("tokenizer.ggml.bos_token_id", 256)
    writer.add_uint32("tokenizer.ggml.eos_token_id", 257)
    writer.add_tensor("token_embd.weight", w["model.embed_tokens.weight"].numpy())
    writer.add_tensor("output_norm.weight", w["model.norm.weight"].numpy() + 1.0)
    for name, tensor in w.items():
        if name.startswith("model.layers."):
            _, _, i, rest = name.split(".", 3)
            module = rest.removesuffix(".weight")
            array = tensor.numpy() + (1.0 if module.endswith("norm") else 0.0)
            writer.add_tensor(f"blk.{i}.{names[module]}.weight", array)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return path


@pytest.mark.parametrize("variant", ["plain", "softcap", "gguf"])
def test_logits_match_transformers(variant: str, tmp_path: Path) -> None:
    if variant == "gguf":  # GGUF has no query_pre_attn_scalar key: it is head_dim there
        local = {"rope_type": "default", "rope_theta": 2e4}
        rope = {**ROPE, "sliding_attention": local}
        ref_dir = build_gemma3(
            tmp_path / "hf", *SOFTCAPS["softcap"], query_pre_attn_scalar=16, rope_parameters=rope
        )
        path = write_gguf(ref_dir, tmp_path / "tiny.gguf")
    else:
        path = ref_dir = build_gemma3(tmp_path / variant, *SOFTCAPS[variant])
    llm = LLM(
        str(path),
        num_kv_blocks=64,
        block_size=4,
        long_prefill_token_threshold=8,
        max_num_batched_tokens=32,
        enable_prefix_caching=True,
    )
    captured: dict[str, list[torch.Tensor]] = {}

    def hook(rows, logits):  # type: ignore[no-untyped-def]
        for row, lg in zip(rows, logits, strict=True):
            captured.setdefault(row.request.request_id, []).append(lg.clone())

    llm.engine.runner.logits_hook = hook
    ps = prompts()
    params = SamplingParams(temperature=0.0, max_tokens=NEW_TOKENS, ignore_eos=True)
    # staggered: the last one arrives after the others have run, to hit the prefix cache
    outs = llm.generate([{"prompt_token_ids": p} for p in ps[:-1]], params)
    outs += llm.generate([{"prompt_token_ids": ps[-1]}], params)
    assert llm.engine.kv_manager.block_pool.prefix_hits > 0

    ref = reference_model(ref_dir, softcapped=variant != "plain")
    worst = 0.0
    for prompt, out in zip(ps, outs, strict=True):
        gen = out.outputs[0].token_ids
        assert len(gen) == NEW_TOKENS
        with torch.inference_mode():
            ref_logits = ref(input_ids=torch.tensor([prompt + gen])).logits[0, len(prompt) - 1 : -1]
        ours = torch.stack(captured[out.request_id])
        diff = (ours - ref_logits).abs().max().item()
        worst = max(worst, diff)
        assert diff <= ATOL, f"{variant}: prompt of {len(prompt)} tokens, max diff {diff:.2e}"
        # greedy tokens are the reference's argmax wherever the top two are not a near-tie
        top2 = ref_logits.topk(2, dim=-1).values
        clear = (top2[:, 0] - top2[:, 1]) > 10 * ATOL
        assert (ref_logits.argmax(-1)[clear] == torch.tensor(gen)[clear]).all()
    if variant != "plain":
        assert ref.config.final_logit_softcapping is not None
        assert max(lg.abs().max().item() for v in captured.values() for lg in v) < 5.0
    print(f"gemma3 tiny {variant}: worst max |logit diff| {worst:.2e}")


def test_sliding_layers_ignore_tokens_outside_the_window(tmp_path: Path) -> None:
    """One sliding layer only: tokens more than WINDOW back must not change the next token's
    logits, while a change inside the window does."""
    path = build_gemma3(
        tmp_path / "one", None, None, num_hidden_layers=1, layer_types=["sliding_attention"]
    )
    llm = LLM(str(path), num_kv_blocks=64, block_size=4)
    logits: list[torch.Tensor] = []
    llm.engine.runner.logits_hook = lambda rows, lg: logits.append(lg.clone())
    params = SamplingParams(temperature=0.0, max_tokens=1)
    tail = list(range(100, 100 + WINDOW))
    for head in ([1] * 20 + tail, [2] * 20 + tail, [2] * 20 + [9] + tail[1:]):
        llm.generate([{"prompt_token_ids": head}], params)
    torch.testing.assert_close(logits[0], logits[1], atol=1e-5, rtol=0)
    assert (logits[0] - logits[2]).abs().max() > 1e-3
