"""One-user decode speed with tensor parallelism: TP=2 against one process, same run.

    .venv/bin/python -m benchmarks.tensor_parallel [--quantization q8_0] [--repeat 2]

SmolLM2-135M has 3 KV heads, which 2 does not divide, so this builds (once, in
``--model-dir``) a random Llama-shaped model of about 240M parameters with transformers'
reference class: 12 layers, hidden 1024, 16 heads / 8 KV heads, MLP 4096. Offline ``LLM``
runs alternate TP=1 with 2 threads, TP=1 with 1 thread and TP=2 (one thread per rank): a
64-token prompt, 64 greedy tokens (end of sequence ignored), after a 4-token warm-up. Reports
decode tok/s per run and the median per setting.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch

from heron import LLM, SamplingParams

SETTINGS: dict[str, tuple[int, int | None]] = {  # name -> (tensor_parallel_size, num_threads)
    "TP=1, 2 threads": (1, 2),
    "TP=1, 1 thread": (1, 1),
    "TP=2, 1 thread per rank": (2, None),
}


def build_model(directory: Path) -> None:
    """Write the random Llama-shaped checkpoint and a byte tokenizer to ``directory``."""
    import transformers

    from tests.models.tiny import save_byte_tokenizer

    config = transformers.LlamaConfig(
        vocab_size=32000,
        hidden_size=1024,
        intermediate_size=4096,
        num_hidden_layers=12,
        num_attention_heads=16,
        num_key_value_heads=8,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(config).eval()
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    save_byte_tokenizer(directory)


def decode_rate(directory: Path, tp: int, threads: int | None, quantization: str | None) -> float:
    """One engine's decode tok/s on the fixed prompt; the engine is closed afterwards."""
    llm = LLM(
        str(directory),
        tensor_parallel_size=tp,
        num_threads=threads,
        quantization=quantization,
        kv_cache_memory_bytes=64 << 20,
    )
    try:
        prompt = {"prompt_token_ids": list(range(100, 164))}
        llm.generate(prompt, SamplingParams(temperature=0.0, max_tokens=4))  # warm-up
        params = SamplingParams(temperature=0.0, max_tokens=64, ignore_eos=True)
        started = time.perf_counter()
        out = llm.generate(prompt, params)
        elapsed = time.perf_counter() - started
        return len(out[0].outputs[0].token_ids) / elapsed
    finally:
        llm.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, default=Path("/tmp/heron-tp-llama-240m"))
    parser.add_argument("--quantization", default=None, help="e.g. q8_0; default float32")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args()
    if not (args.model_dir / "config.json").exists():
        build_model(args.model_dir)
    runs: dict[str, list[float]] = {name: [] for name in SETTINGS}
    for _ in range(args.repeat):
        for name, (tp, threads) in SETTINGS.items():
            rate = decode_rate(args.model_dir, tp, threads, args.quantization)
            runs[name].append(rate)
            print(f"{name}: {rate:.1f} tok/s", flush=True)
    print(f"\nweights: {args.quantization or 'float32'}")
    print("| setting | decode tok/s (median) | runs |\n|---|---|---|")
    for name, rates in runs.items():
        shown = ", ".join(f"{r:.1f}" for r in rates)
        print(f"| {name} | {statistics.median(rates):.1f} | {shown} |")


if __name__ == "__main__":
    main()
