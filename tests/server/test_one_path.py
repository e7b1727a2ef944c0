"""One request path: a sampling field declared once (``heron.server.sampling.EngineFields``)
reaches the engine through all three API families, sent by their official clients; the
shared run answers refusals in each family's error shape."""

from __future__ import annotations

import anthropic
import httpx
import ollama
import openai
import pytest

from tests.server.conftest import ServerProcess

pytestmark = pytest.mark.slow

MODEL = "smollm2"
HI = [{"role": "user", "content": "Say hi."}]


def test_engine_fields_reach_the_engine_from_every_family(server: ServerProcess) -> None:
    """``ignore_eos`` + ``min_tokens`` force exactly ``max_tokens`` tokens, whatever the
    model would say: the same number from each family."""
    extra = {"ignore_eos": True, "min_tokens": 12}
    oai = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    chat = oai.chat.completions.create(
        model=MODEL,
        messages=HI,
        max_tokens=12,
        temperature=0,
        extra_body=extra,  # type: ignore[arg-type]
    )
    assert chat.usage is not None and chat.usage.completion_tokens == 12
    assert chat.choices[0].finish_reason == "length"

    ant = anthropic.Anthropic(base_url=server.base_url, api_key="unused", max_retries=0)
    # (this SDK's create() has no sampling arguments: ignore_eos makes the count exact anyway)
    msg = ant.messages.create(
        model=MODEL,
        messages=HI,  # type: ignore[arg-type]
        max_tokens=12,
        extra_body=extra,
    )
    assert msg.usage.output_tokens == 12 and msg.stop_reason == "max_tokens"

    oll = ollama.Client(host=server.base_url)
    reply = oll.chat(
        model=MODEL, messages=HI, options={"num_predict": 12, "temperature": 0, **extra}
    )
    assert reply.eval_count == 12 and reply.done_reason == "length"


def test_stop_token_ids_from_every_family(server: ServerProcess) -> None:
    """The first greedy token, given as a stop token id, ends each reply at once."""
    from heron.loader import load_checkpoint
    from heron.store.resolve import resolve_model
    from heron.tokenizer import Tokenizer

    base = server.base_url
    prompt = {"model": MODEL, "prompt": "The sky is", "temperature": 0}
    first = httpx.post(f"{base}/v1/completions", json={**prompt, "max_tokens": 1}, timeout=60)
    tokenizer = Tokenizer.from_checkpoint(load_checkpoint(resolve_model(MODEL)))
    (stop_id,) = tokenizer.encode(first.json()["choices"][0]["text"], add_special_tokens=False)
    oai = httpx.post(
        f"{base}/v1/completions",
        json={**prompt, "max_tokens": 8, "stop_token_ids": [stop_id]},
        timeout=60,
    ).json()
    assert oai["choices"][0]["finish_reason"] == "stop"
    assert oai["choices"][0]["stop_reason"] == stop_id
    assert oai["usage"]["completion_tokens"] == 1
    gen = ollama.Client(host=base).generate(
        model=MODEL,
        prompt="The sky is",
        raw=True,
        options={"num_predict": 8, "temperature": 0, "stop_token_ids": [stop_id]},  # type: ignore[dict-item]
    )
    assert gen.eval_count == 1 and gen.done_reason == "stop"


def test_a_bad_engine_field_is_a_400_in_each_familys_shape(server: ServerProcess) -> None:
    base = server.base_url
    r = httpx.post(
        f"{base}/v1/chat/completions",
        json={"model": MODEL, "messages": HI, "stop_token_ids": [10**9]},
        timeout=30,
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "stop_token_ids"
    r = httpx.post(
        f"{base}/v1/messages",
        json={"model": MODEL, "messages": HI, "max_tokens": 4, "stop_token_ids": [10**9]},
        timeout=30,
    )
    assert r.status_code == 400 and r.json()["type"] == "error"
    assert "stop_token_ids" in r.json()["error"]["message"]
    r = httpx.post(
        f"{base}/api/chat",
        json={"model": MODEL, "messages": HI, "options": {"stop_token_ids": [10**9]}},
        timeout=30,
    )
    assert r.status_code == 400 and "stop_token_ids" in r.json()["error"]
    r = httpx.post(
        f"{base}/api/chat",
        json={"model": MODEL, "messages": HI, "options": {"min_tokens": "many"}},
        timeout=30,
    )
    assert r.status_code == 400 and "min_tokens" in r.json()["error"]
