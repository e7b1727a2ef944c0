"""Multi-LoRA throughput: adapters against the base model on one server, same run.

    .venv/bin/python -m benchmarks.lora [--repeat 2] [--lora-dtype auto|float16|float32]

Writes four random rank-16 PEFT adapters for SmolLM2-135M (every attention and MLP
projection of every layer, as a fine-tune would), starts ``heron serve smollm2 --lora
a0=... --lora a3=...``, and alternates four workloads through the OpenAI API (128 tokens
per request, end of sequence ignored, greedy):

- 16 users on the base model, and 16 users spread over the 4 adapters (user i on a(i % 4));
- 1 user on the base model, and 1 user on one adapter.

Reports aggregate tok/s (completion tokens of all requests / wall time) and the ratios; the
bars are 0.75 (16 users) and 0.85 (1 user).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
import numpy as np
from safetensors.numpy import save_file

from heron.loader import load_checkpoint
from heron.packaged import find_packaged_model

PORT = 18620
TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
PROMPT = "Write a short story about a lighthouse keeper."


def write_adapter(directory: Path, seed: int, rank: int = 16) -> Path:
    """A random PEFT adapter on every projection of every layer (nonzero B)."""
    cfg = load_checkpoint(find_packaged_model()).config
    q = cfg.num_attention_heads * cfg.head_dim
    kv = cfg.num_key_value_heads * cfg.head_dim
    h, inter = cfg.hidden_size, cfg.intermediate_size
    shapes = {
        "q_proj": (h, q), "k_proj": (h, kv), "v_proj": (h, kv), "o_proj": (q, h),
        "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h),
    }  # fmt: skip
    rng = np.random.default_rng(seed)
    tensors: dict[str, np.ndarray] = {}
    for layer in range(cfg.num_hidden_layers):
        for target, (n_in, n_out) in shapes.items():
            block = "mlp" if target in ("gate_proj", "up_proj", "down_proj") else "self_attn"
            prefix = f"base_model.model.model.layers.{layer}.{block}.{target}"
            tensors[f"{prefix}.lora_A.weight"] = (
                rng.standard_normal((rank, n_in), np.float32) * 0.02
            )
            tensors[f"{prefix}.lora_B.weight"] = (
                rng.standard_normal((n_out, rank), np.float32) * 0.02
            )
    directory.mkdir(parents=True)
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    config = {
        "peft_type": "LORA", "task_type": "CAUSAL_LM", "r": rank, "lora_alpha": 2 * rank,
        "target_modules": list(TARGETS), "bias": "none", "lora_dropout": 0.0,
    }  # fmt: skip
    (directory / "adapter_config.json").write_text(json.dumps(config))
    return directory


async def one_user(client: httpx.AsyncClient, model: str, requests: int) -> int:
    tokens = 0
    for _ in range(requests):
        body = {
            "model": model,
            "messages": [{"role": "user", "content": PROMPT}],
            "max_tokens": 128,
            "temperature": 0,
            "ignore_eos": True,
        }
        r = await client.post("/v1/chat/completions", json=body)
        r.raise_for_status()
        tokens += int(r.json()["usage"]["completion_tokens"])
    return tokens


async def workload(models: list[str], requests: int) -> float:
    """Aggregate tok/s of one user per entry of ``models``, all at once."""
    base = f"http://127.0.0.1:{PORT}"
    async with httpx.AsyncClient(base_url=base, timeout=600) as client:
        start = time.monotonic()
        counts = await asyncio.gather(*(one_user(client, m, requests) for m in models))
        return sum(counts) / (time.monotonic() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=2)
    parser.add_argument("--lora-dtype", default="auto", help="heron serve --lora-dtype")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        names = [f"a{i}" for i in range(4)]
        lora = [f"{n}={write_adapter(Path(tmp) / n, seed=i)}" for i, n in enumerate(names)]
        cmd = [sys.executable, "-m", "heron.cli", "serve", "smollm2", "--port", str(PORT)]
        cmd += ["--max-loras", "4", "--max-lora-rank", "16", "--lora-dtype", args.lora_dtype]
        for spec in lora:
            cmd += ["--lora", spec]
        server = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            for _ in range(600):
                try:
                    if httpx.get(f"http://127.0.0.1:{PORT}/ready").status_code == 200:
                        break
                except httpx.TransportError:
                    pass
                time.sleep(0.2)
            cases = {
                "16 users, base": (["smollm2"] * 16, 2),
                "16 users, 4 adapters": ([names[i % 4] for i in range(16)], 2),
                "1 user, base": (["smollm2"], 3),
                "1 user, adapter": ([names[0]], 3),
            }
            asyncio.run(workload(["smollm2", *names], 1))  # warm-up: load every adapter
            rates: dict[str, list[float]] = {name: [] for name in cases}
            for _ in range(args.repeat):
                for name, (models, requests) in cases.items():
                    rates[name].append(asyncio.run(workload(models, requests)))
        finally:
            server.terminate()
            server.wait(30)
    med = {name: statistics.median(v) for name, v in rates.items()}
    print("| workload | agg tok/s (median) | runs |")
    print("|---|---|---|")
    for name, value in med.items():
        print(f"| {name} | {value:.1f} | {', '.join(f'{v:.1f}' for v in rates[name])} |")
    print(f"16 users: adapters / base = {med['16 users, 4 adapters'] / med['16 users, base']:.2f}")
    print(f"1 user: adapter / base = {med['1 user, adapter'] / med['1 user, base']:.2f}")


if __name__ == "__main__":
    main()
