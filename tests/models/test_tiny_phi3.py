"""Phi-3 on tiny random weights against transformers' reference class.

Two shapes: ``phi3`` (Phi-3.5/Phi-4-mini style: fused qkv_proj and gate_up_proj, longrope with
an original context of 64, rope on 3/4 of each head, tied embeddings) and ``phi3-swa``
(Phi-3-mini-4k style: no rope scaling, a 16-token sliding window). Both from HF directories
and from GGUF files in llama.cpp's ``phi3`` layout (fused ``attn_qkv``, ``ffn_up`` holding
gate and up, ``rope_factors_*`` tensors), through the paged cache (``parity.py``: 1e-4, fp32).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from heron import LLM, SamplingParams
from heron.loader import load_checkpoint
from tests.models.parity import ATOL, capture_logits, check_parity, paged_llm
from tests.models.tiny import PHI3_ORIGINAL_CONTEXT, build, write_gguf

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def phi3_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("phi3", tmp_path_factory.mktemp("phi3") / "hf")


@pytest.fixture(scope="module")
def phi3_swa_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build("phi3-swa", tmp_path_factory.mktemp("phi3-swa") / "hf")


def test_hf_logits_match_transformers(phi3_dir: Path, phi3_swa_dir: Path) -> None:
    # Prompt plus generated tokens stay within 64 positions: longrope's short factors.
    check_parity(phi3_dir, phi3_dir, "phi3")
    check_parity(phi3_swa_dir, phi3_swa_dir, "phi3-swa")  # prompts up to 40 > window 16


def test_gguf_round_trip(phi3_dir: Path, phi3_swa_dir: Path, tmp_path: Path) -> None:
    path = write_gguf(phi3_dir, tmp_path / "phi3.gguf")
    gguf, hf = load_checkpoint(path), load_checkpoint(phi3_dir)
    try:
        c = gguf.config
        assert c.architecture == "Phi3ForCausalLM" and c.sliding_window is None
        assert c.rope_scaling is not None and c.rope_scaling["rope_type"] == "longrope"
        assert c.rope_scaling["original_max_position_embeddings"] == PHI3_ORIGINAL_CONTEXT
        assert c.extra["rope_dimension_count"] == 12
        ours, want = dict(gguf.weights()), dict(hf.weights())
        assert sorted(ours) == sorted(want)
        for name, tensor in want.items():  # fused tensors, rows in HF order
            assert torch.equal(ours[name], tensor), name
    finally:
        gguf.close()
    check_parity(path, phi3_dir, "phi3 gguf")
    swa = write_gguf(phi3_swa_dir, tmp_path / "phi3-swa.gguf")
    check_parity(swa, phi3_swa_dir, "phi3-swa gguf")


def test_longrope_past_the_original_context(phi3_dir: Path) -> None:
    """Positions from 64 on use the long factors. transformers picks the factor set per
    forward from the longest position in it, so its token-by-token decode is the reference:
    a 50-token prompt (short factors), then 30 steps, 16 of them past position 64."""
    from transformers import AutoModelForCausalLM, DynamicCache

    prompt = torch.randint(0, 256, (50,), generator=torch.Generator().manual_seed(3)).tolist()
    steps = 30
    llm = paged_llm(phi3_dir)
    captured = capture_logits(llm)
    params = SamplingParams(temperature=0.0, max_tokens=steps, ignore_eos=True)
    out = llm.generate([{"prompt_token_ids": prompt}], params)[0]
    ours = torch.stack(captured[out.request_id])

    ref = AutoModelForCausalLM.from_pretrained(str(phi3_dir), dtype=torch.float32).eval()
    cache, step_input, ref_logits = DynamicCache(), torch.tensor([prompt]), []
    with torch.inference_mode():
        for token in out.outputs[0].token_ids:
            ref_logits.append(ref(input_ids=step_input, cache=cache, use_cache=True).logits[0, -1])
            step_input = torch.tensor([[token]])
    diff = (ours - torch.stack(ref_logits)).abs().max().item()
    print(f"phi3 longrope past {PHI3_ORIGINAL_CONTEXT}: worst max |logit diff| {diff:.2e}")
    assert diff <= ATOL
    assert out.outputs[0].token_ids == [int(lg.argmax()) for lg in ref_logits]


@pytest.mark.parametrize("rope_type", ["yarn", "dynamic"])
def test_unsupported_rope_scaling_is_refused(phi3_dir: Path, tmp_path: Path, rope_type: str):
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in phi3_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    cfg = json.loads((bad / "config.json").read_text())
    cfg["rope_parameters"]["rope_type"] = rope_type
    (bad / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(ValueError, match=f"unsupported rope scaling type '{rope_type}'"):
        LLM(str(bad), num_kv_blocks=16)


def test_split_projections_load_like_fused_ones(phi3_dir: Path) -> None:
    """Split q/k/v and gate/up tensors (older GGUF conversions) fill the same rows."""
    from heron.models.phi3 import Phi3ForCausalLM

    ckpt = load_checkpoint(phi3_dir)
    c = ckpt.config
    q, kv = c.num_attention_heads * c.head_dim, c.num_key_value_heads * c.head_dim
    inter = c.intermediate_size
    split: list[tuple[str, torch.Tensor]] = []
    for name, tensor in ckpt.weights():
        if ".qkv_proj." in name:
            parts = tensor.split([q, kv, kv])
            for part, t in zip(("q_proj", "k_proj", "v_proj"), parts, strict=True):
                split.append((name.replace("qkv_proj", part), t))
        elif ".gate_up_proj." in name:
            gate, up = tensor.split([inter, inter])
            split += [(name.replace("gate_up", "gate"), gate), (name.replace("gate_up", "up"), up)]
        else:
            split.append((name, tensor))
    fused, pieces = Phi3ForCausalLM(c), Phi3ForCausalLM(c)
    fused.load_weights(ckpt.weights())
    pieces.load_weights(split)
    theirs = pieces.state_dict()
    for name, tensor in fused.state_dict().items():
        assert torch.equal(tensor, theirs[name]), name
