"""What structured output costs: grammar compile time and per-step mask time, offline, and
the time to first token of a request with a new schema against a cached one and an
unconstrained one, through a running server.

    .venv/bin/python scripts/bench_grammar.py                      # offline only
    .venv/bin/python scripts/bench_grammar.py --url http://127.0.0.1:11434 --model smollm2

The schema is the pydantic model of an address book (people with nested addresses, phone
numbers, an enum and optional fields); each "new schema" differs only in its title, so the
cache cannot serve it.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from enum import StrEnum
from typing import Any

import httpx
import torch
from pydantic import BaseModel

from heron.loader import load_checkpoint
from heron.packaged import find_packaged_model
from heron.request import Request
from heron.sampling_params import SamplingParams
from heron.structured import StructuredOutputsParams
from heron.structured.bitmask import GrammarBitmask, apply
from heron.structured.compiler import GrammarCompiler
from heron.tokenizer import Tokenizer


class PhoneKind(StrEnum):
    home = "home"
    work = "work"
    mobile = "mobile"


class Phone(BaseModel):
    kind: PhoneKind
    number: str


class Address(BaseModel):
    street: str
    city: str
    postcode: str
    country: str | None = None


class Person(BaseModel):
    name: str
    age: int | None = None
    email: str | None = None
    address: Address
    phones: list[Phone]


class AddressBook(BaseModel):
    owner: str
    people: list[Person]


def schema(title: str) -> dict[str, Any]:
    s = AddressBook.model_json_schema()
    s["title"] = title
    return s


def offline(rounds: int) -> dict[str, float]:
    ckpt = load_checkpoint(str(find_packaged_model()))
    tok = Tokenizer.from_checkpoint(ckpt)
    vocab = ckpt.config.vocab_size
    t0 = time.perf_counter()
    compiler = GrammarCompiler(tok.backend.to_str(), vocab, tok.eos_token_ids)
    compiler.submit(StructuredOutputsParams(regex="x")).result()
    tokenizer_s = time.perf_counter() - t0
    cold, warm = [], []
    for i in range(rounds):
        so = StructuredOutputsParams(json=schema(f"AddressBook{i}"))
        t0 = time.perf_counter()
        so.check()
        compiler.submit(so).result()
        cold.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        compiler.submit(StructuredOutputsParams(json=schema(f"AddressBook{i}"))).result()
        warm.append(time.perf_counter() - t0)
    # per-step mask work for 16 constrained rows, each a few tokens into its answer
    reqs = []
    for i in range(16):
        so = StructuredOutputsParams(json=schema("AddressBook"))
        r = Request(f"r{i}", [1], SamplingParams(structured_outputs=so))
        r.grammar = compiler.submit(so).result()
        for t in tok.encode('{"owner":"Ann","people":[{"name":"B', add_special_tokens=False):
            r.grammar.consume_token(t)
        reqs.append(r)
    # each step: fill, apply, and feed every row the most likely allowed token
    bitmask = GrammarBitmask(vocab)
    steps = []
    for _ in range(50):
        logits = torch.randn(16, vocab)
        t0 = time.perf_counter()
        mask = bitmask.fill(reqs)
        assert mask is not None
        apply(logits, mask)
        for r, t in zip(reqs, logits.argmax(-1).tolist(), strict=True):
            r.grammar.consume_token(t)
        steps.append(time.perf_counter() - t0)
    compiler.close()
    return {
        "tokenizer_build_ms": tokenizer_s * 1e3,
        "compile_new_schema_ms_median": statistics.median(cold) * 1e3,
        "compile_new_schema_ms_max": max(cold) * 1e3,
        "cached_schema_ms_median": statistics.median(warm) * 1e3,
        "mask_apply_advance_16_rows_ms_median": statistics.median(steps) * 1e3,
    }


def ttft(client: httpx.Client, model: str, fmt: dict[str, Any] | None) -> float:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": "Write an address book as JSON."}],
        "max_tokens": 1,
        "temperature": 0,
    }
    if fmt is not None:
        body["response_format"] = {"type": "json_schema", "json_schema": fmt}
    t0 = time.perf_counter()
    r = client.post("/v1/chat/completions", json=body)
    r.raise_for_status()
    return time.perf_counter() - t0


def online(url: str, model: str, rounds: int, key: str | None) -> dict[str, float]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    with httpx.Client(base_url=url, headers=headers, timeout=120) as client:
        ttft(client, model, None)  # warm up
        plain, new, cached = [], [], []
        for i in range(rounds):
            plain.append(ttft(client, model, None))
            fmt = {"name": "book", "schema": schema(f"Book{time.time_ns()}-{i}")}
            new.append(ttft(client, model, fmt))
            cached.append(ttft(client, model, fmt))
    med = statistics.median
    return {
        "first_token_unconstrained_ms": med(plain) * 1e3,
        "first_token_new_schema_ms": med(new) * 1e3,
        "first_token_cached_schema_ms": med(cached) * 1e3,
        "new_schema_overhead_ms": (med(new) - med(plain)) * 1e3,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", help="a running Heron server (adds the end-to-end figures)")
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--api-key")
    ap.add_argument("--rounds", type=int, default=20)
    args = ap.parse_args()
    result = offline(args.rounds)
    if args.url:
        result |= online(args.url, args.model, args.rounds, args.api_key)
    print(json.dumps({k: round(v, 2) for k, v in result.items()}, indent=2))


if __name__ == "__main__":
    main()
