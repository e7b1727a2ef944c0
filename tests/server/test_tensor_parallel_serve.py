"""``heron serve --tensor-parallel-size 2``: a real server whose engine core runs with a
worker process gives, through the official OpenAI client, the greedy completion one process
gives offline."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import openai
import pytest

from heron import LLM, SamplingParams
from tests.models.tiny import build
from tests.server.conftest import running_server

PROMPT = "The heron stands in the shallow water and waits"


def test_tp2_server_matches_offline(tmp_path: Path) -> None:
    path = build("qwen2", tmp_path / "qwen2")
    llm = LLM(str(path), kv_cache_memory_bytes=8 << 20)
    params = SamplingParams(temperature=0.0, max_tokens=24)
    want = llm.generate(PROMPT, params)[0].outputs[0].text
    assert want  # something to compare
    args = ("--tensor-parallel-size", "2", "--served-model-name", "tiny", "--quantization", "none")
    with running_server(*args, "--kv-cache-memory-mb", "16", model=str(path)) as server:
        client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x")
        got = client.completions.create(
            model="tiny",
            prompt=PROMPT,
            max_tokens=24,
            temperature=0,
        )
        assert got.choices[0].text == want
        stream = client.completions.create(
            model="tiny", prompt=PROMPT, max_tokens=24, temperature=0, stream=True
        )
        assert "".join(c.choices[0].text for c in stream if c.choices) == want


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--data-parallel-size", "2"], "with --data-parallel-size is not supported"),
        (["--quantization", "int8"], "does not support int8"),
        (["--speculative", "ngram"], "does not support speculative decoding"),
    ],
)
def test_tp_refusals_at_the_cli(args: list[str], problem: str) -> None:
    cmd = [sys.executable, "-m", "heron.cli", "serve", "x", "--tensor-parallel-size", "2"]
    done = subprocess.run([*cmd, *args], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert problem in done.stderr
