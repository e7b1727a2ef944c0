"""``python -m heron [PROMPT]``: chat with a model, streaming tokens as they are generated.

The full CLI (serve/run/pull and the model store) builds on this; until then a model is a
GGUF file, an HF directory, or the name of a packaged model (default: smollm2).
"""

from __future__ import annotations

import argparse
import sys
import time


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="heron", description=__doc__)
    parser.add_argument("prompt", nargs="?", help="the user message; read from stdin if absent")
    parser.add_argument("--model", default="smollm2", help="GGUF path, HF dir or packaged name")
    parser.add_argument("--max-tokens", type=int, default=256)
    parser.add_argument("--temperature", type=float, default=0.0)
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument(
        "--raw", action="store_true", help="complete the prompt without a chat template"
    )
    parser.add_argument("--verbose", action="store_true", help="print TTFT and tokens/s")
    args = parser.parse_args(argv)

    from heron.config import EngineConfig
    from heron.engine.llm_engine import LLMEngine
    from heron.sampling_params import SamplingParams

    prompt = args.prompt if args.prompt is not None else sys.stdin.read()
    if not prompt.strip():
        parser.error("empty prompt")
    engine = LLMEngine(args.model, EngineConfig())
    params = SamplingParams(
        max_tokens=args.max_tokens, temperature=args.temperature, seed=args.seed
    )
    ids = (
        engine.tokenizer.encode(prompt)
        if args.raw
        else engine.tokenizer.encode_chat([{"role": "user", "content": prompt}])
    )
    start = time.perf_counter()
    first = None
    engine.add_request("cli", ids, params)
    printed, num_tokens = 0, 0
    while engine.has_unfinished_requests():
        for out in engine.step():
            first = first or time.perf_counter()
            completion = out.outputs[0]
            sys.stdout.write(completion.text[printed:])
            sys.stdout.flush()
            printed, num_tokens = len(completion.text), len(completion.token_ids)
    sys.stdout.write("\n")
    if args.verbose and first is not None:
        elapsed = time.perf_counter() - first
        rate = (num_tokens - 1) / elapsed if elapsed > 0 and num_tokens > 1 else 0.0
        print(f"TTFT {1000 * (first - start):.0f} ms, {rate:.1f} tok/s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
