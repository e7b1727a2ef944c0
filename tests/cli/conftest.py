"""The ``heron`` CLI run as a subprocess against real ``heron serve`` processes. One server
(``serve smollm2``, with an API key) and its temporary ``HERON_MODELS`` serve the session."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from heron import LLM, SamplingParams
from heron.prompt import ChatRenderer
from tests.server.conftest import ServerProcess, free_port, running_server

API_KEY = "cli-test-key"
MAX_TOKENS = 24  # the server's cap on a reply: keeps the one-shot runs short


def cli_env(port: int, models_dir: Path, api_key: str | None = API_KEY) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERON_")}
    env.update(HERON_HOST=f"127.0.0.1:{port}", HERON_MODELS=str(models_dir), TERM="dumb")
    if api_key:
        env["HERON_API_KEY"] = api_key
    return env


@dataclass
class Heron:
    """Runs ``python -m heron.cli ARGS`` with ``env``; stdin is empty unless given."""

    env: dict[str, str]
    cwd: Path | None = None
    calls: list[list[str]] = field(default_factory=list)

    def __call__(
        self, *args: str, input: str | None = None, timeout: float = 300, **env: str
    ) -> subprocess.CompletedProcess[str]:
        self.calls.append(list(args))
        return subprocess.run(
            [sys.executable, "-m", "heron.cli", *args],
            env={**self.env, **env},
            cwd=self.cwd,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("heron-models")


@pytest.fixture(scope="session")
def cli_server(models_dir: Path) -> Iterator[ServerProcess]:
    """One ``heron serve smollm2`` for the session, with an API key the CLI must send."""
    args = ("--kv-cache-memory-mb", "256", "--max-tokens", str(MAX_TOKENS))
    env = {"HERON_MODELS": str(models_dir)}
    with running_server(*args, env=env, api_key=API_KEY) as server:
        yield server


@pytest.fixture(scope="session")
def heron(cli_server: ServerProcess, models_dir: Path) -> Heron:
    return Heron(cli_env(cli_server.port, models_dir))


PIRATE = "You are a pirate."
PIRATE_MODELFILE = f'''# a local GGUF file, relative to this Modelfile
FROM ./weights/smollm2.gguf
PARAMETER temperature 0
PARAMETER num_predict 6
SYSTEM """{PIRATE}"""
LICENSE """MIT License
Copyright (c) Heron"""
'''


@pytest.fixture(scope="session")
def pirate(heron: Heron, smollm2_path: str, tmp_path_factory: pytest.TempPathFactory) -> str:
    """``heron create pirate`` from the packaged GGUF file (uploaded as a blob); returns the
    command's stderr."""
    directory = tmp_path_factory.mktemp("pirate")
    (directory / "weights").mkdir()
    os.symlink(smollm2_path, directory / "weights" / "smollm2.gguf")
    (directory / "Modelfile").write_text(PIRATE_MODELFILE)
    r = heron("create", "pirate", "-f", str(directory / "Modelfile"))
    assert r.returncode == 0, r.stderr
    return r.stderr


@pytest.fixture
def no_server(models_dir: Path) -> Heron:
    """The CLI pointed at a free port where nothing listens."""
    return Heron(cli_env(free_port(), models_dir))


@pytest.fixture(scope="session")
def offline_llm() -> LLM:
    return LLM("smollm2", kv_cache_memory_bytes=64 << 20, quantization="auto")


def greedy(llm: LLM, messages: list[dict[str, str]], max_tokens: int) -> str:
    """What the server must answer with temperature 0 and ``num_predict`` = ``max_tokens``."""
    ids = ChatRenderer(llm.get_tokenizer()).encode(messages)
    params = SamplingParams(temperature=0, max_tokens=max_tokens)
    return llm.generate({"prompt_token_ids": ids}, params)[0].outputs[0].text
