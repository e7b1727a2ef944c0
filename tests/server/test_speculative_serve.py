"""``heron serve --speculative ngram``: the same greedy completion as without it, and the
``heron:spec_decode_*`` counters on /metrics."""

from __future__ import annotations

import re
import subprocess
import sys

import httpx
import openai
import pytest

from heron import LLM, SamplingParams
from tests.server.conftest import running_server

pytestmark = pytest.mark.slow

CODE = (
    "def add_item(cart, item, price):\n"
    "    cart[item] = cart.get(item, 0) + price\n"
    "    return cart\n\n"
    "def remove_item(cart, item):\n"
    "    if item in cart:\n"
    "        del cart[item]\n"
    "    return cart\n"
)
COPY = f"```python\n{CODE}```\n\nThe same code with a docstring added:\n\n```python\n"


def counter(text: str, name: str, labels: str = "") -> float:
    pattern = rf"^{re.escape(name)}\{{[^}}]*{re.escape(labels)}[^}}]*\}} ([0-9.e+-]+)$"
    m = re.search(pattern, text, re.M)
    assert m, f"{name} {labels} not in /metrics"
    return float(m.group(1))


def test_speculative_server_matches_and_counts(offline_llm: LLM) -> None:
    want = offline_llm.generate(COPY, SamplingParams(temperature=0.0, max_tokens=40))
    with running_server(
        "--kv-cache-memory-mb", "64", "--speculative", "ngram", "--num-speculative-tokens", "4"
    ) as s:
        client = openai.OpenAI(base_url=f"{s.base_url}/v1", api_key="x")
        got = client.completions.create(model="smollm2", prompt=COPY, max_tokens=40, temperature=0)
        assert got.choices[0].text == want[0].outputs[0].text
        text = httpx.get(f"{s.base_url}/metrics").text
    drafts = counter(text, "heron:spec_decode_num_draft_tokens_total")
    accepted = counter(text, "heron:spec_decode_num_accepted_tokens_total")
    assert 0 < accepted <= drafts
    assert counter(text, "heron:spec_decode_num_drafts_total") > 0
    first = counter(text, "heron:spec_decode_num_accepted_tokens_per_pos_total", 'position="0"')
    assert 0 < first <= accepted


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (["--speculative", "eagle"], "ngram, suffix, draft:MODEL or none"),
        (["--num-speculative-tokens", "3"], "--num-speculative-tokens needs --speculative"),
        (["--speculative", "ngram", "--num-speculative-tokens", "0"], "num_speculative_tokens"),
    ],
)
def test_bad_speculative_options_are_refused(args: list[str], problem: str) -> None:
    cmd = [sys.executable, "-m", "heron.cli", "serve", "smollm2", "--port", "1", *args]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert problem in done.stderr
