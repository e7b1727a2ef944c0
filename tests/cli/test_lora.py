"""``heron create`` with a Modelfile ``ADAPTER`` (a PEFT directory next to the Modelfile),
then ``heron show`` and ``heron run`` on the new model, against the session's server."""

from __future__ import annotations

from pathlib import Path

import pytest

from heron import LLM, SamplingParams
from heron.lora import LoRARequest
from heron.prompt import ChatRenderer
from tests.cli.conftest import PIRATE, Heron
from tests.cli.test_models import names
from tests.server.lora_files import write_peft_adapter

pytestmark = pytest.mark.slow

QUESTION = "Who are you?"


def test_create_show_and_run_a_model_with_an_adapter(
    heron: Heron, pirate: str, tmp_path: Path
) -> None:
    adapter = write_peft_adapter(tmp_path / "adapter", seed=7)
    (tmp_path / "Modelfile").write_text("FROM pirate\nADAPTER ./adapter\n")
    r = heron("create", "pirate-lora", "-f", str(tmp_path / "Modelfile"))
    assert r.returncode == 0, r.stderr
    assert "checking adapter" in r.stderr and r.stderr.rstrip().endswith("success")
    assert "pirate-lora:latest" in names(heron("list").stdout)

    modelfile = heron("show", "pirate-lora", "--modelfile").stdout
    assert "\nADAPTER " in modelfile and "SYSTEM" in modelfile  # the base's SYSTEM is kept
    assert "  Adapters" in heron("show", "pirate-lora").stdout

    tuned = heron("run", "pirate-lora", QUESTION)
    assert tuned.returncode == 0, tuned.stderr
    base = heron("run", "pirate", QUESTION)
    assert tuned.stdout != base.stdout
    # the same tokens as the offline engine with the same adapter (pirate: 6 greedy tokens)
    llm = LLM("smollm2", kv_cache_memory_bytes=64 << 20, quantization="auto", enable_lora=True)
    messages = [{"role": "system", "content": PIRATE}, {"role": "user", "content": QUESTION}]
    ids = ChatRenderer(llm.get_tokenizer()).encode(messages)
    lora = LoRARequest("a", 1, str(adapter))
    out = llm.generate(
        {"prompt_token_ids": ids}, SamplingParams(temperature=0, max_tokens=6), lora_request=lora
    )
    assert tuned.stdout == out[0].outputs[0].text + "\n"


def test_a_bad_adapter_is_refused_and_no_model_is_written(
    heron: Heron, pirate: str, tmp_path: Path
) -> None:
    write_peft_adapter(tmp_path / "wrong", wrong_shape=True)
    (tmp_path / "Modelfile").write_text("FROM pirate\nADAPTER ./wrong\n")
    r = heron("create", "pirate-wrong", "-f", str(tmp_path / "Modelfile"))
    assert r.returncode == 1
    assert r.stderr.rstrip().splitlines()[-1].startswith("Error: ADAPTER: "), r.stderr
    (tmp_path / "Modelfile").write_text("FROM pirate\nADAPTER ./nothing-here\n")
    r = heron("create", "pirate-wrong", "-f", str(tmp_path / "Modelfile"))
    assert r.returncode == 1 and "no such file or directory" in r.stderr
    assert "pirate-wrong:latest" not in names(heron("list").stdout)
