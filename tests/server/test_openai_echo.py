"""``/v1/completions`` with ``echo`` (lm-eval's loglikelihood: the prompt's token logprobs)
and ``stream_options.continuous_usage_stats`` (guidellm's default), against a real
``heron serve``; the numbers are checked against the offline ``LLM``'s prompt logprobs."""

from __future__ import annotations

import json
import math
from typing import Any

import httpx
import openai
import pytest

from heron import LLM, SamplingParams
from tests.server.conftest import ServerProcess

pytestmark = pytest.mark.slow

MODEL = "smollm2"
PROMPT = "The capital of France is"
TOL = 1e-3  # the server's prefill batches differ from the offline engine's


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)


def offline_scores(llm: LLM, ids: list[int], k: int) -> list[dict[str, float] | None]:
    """Each prompt token's {text: logprob} of the top k and itself, from ``LLM.generate``."""
    out = llm.generate({"prompt_token_ids": ids}, SamplingParams(max_tokens=1, prompt_logprobs=k))
    lps = out[0].prompt_logprobs
    assert lps is not None and len(lps) == len(ids) and lps[0] is None
    tok = llm.get_tokenizer()
    return [
        None
        if e is None
        else {tok.decode([t], skip_special_tokens=False): lp.logprob for t, lp in e.items()}
        for e in lps
    ]


def events(server: ServerProcess, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    with httpx.stream("POST", f"{server.base_url}{path}", json=body, timeout=120) as r:
        assert r.status_code == 200, r.read()
        raw = r.read().decode()
    data = [e[len("data: ") :] for e in raw.split("\n\n") if e]
    assert data[-1] == "[DONE]"
    return [json.loads(d) for d in data[:-1]]


def test_echo_scores_the_prompt(client: openai.OpenAI, offline_llm: LLM) -> None:
    """max_tokens 0: the prompt's text and logprobs, nothing generated."""
    ids = offline_llm.get_tokenizer().encode(PROMPT)
    resp = client.completions.create(
        model=MODEL, prompt=PROMPT, echo=True, logprobs=1, max_tokens=0
    )
    (choice,) = resp.choices
    assert choice.text == PROMPT and choice.finish_reason == "length"
    assert resp.usage is not None
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (len(ids), 0)
    lp = choice.logprobs
    assert lp is not None and lp.tokens is not None and lp.token_logprobs is not None
    assert lp.top_logprobs is not None and lp.text_offset is not None
    assert "".join(lp.tokens) == PROMPT and len(lp.tokens) == len(ids)
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    pairs = zip(lp.tokens, lp.text_offset, strict=True)
    assert lp.text_offset == [PROMPT.index(t, o) for t, o in pairs]
    assert lp.text_offset[0] == 0 and lp.text_offset == sorted(lp.text_offset)
    want = offline_scores(offline_llm, ids, 1)
    for t in range(1, len(ids)):
        got, top, ref = lp.token_logprobs[t], lp.top_logprobs[t], want[t]
        assert got is not None and top is not None and ref is not None
        assert math.isclose(got, ref[lp.tokens[t]], abs_tol=TOL)
        assert got < 0 and lp.tokens[t] in top and 1 <= len(top) <= 2
        assert max(top.values()) >= got - TOL  # the top alternative is in there
        for text, value in top.items():
            assert math.isclose(value, ref[text], abs_tol=TOL)


def test_echo_with_a_completion(client: openai.OpenAI, offline_llm: LLM) -> None:
    """Token-id prompt, echo and 4 greedy tokens: prompt + completion, logprobs for both (the
    completion's equal to the offline sampled logprobs), offsets running on."""
    tok = offline_llm.get_tokenizer()
    ids = tok.encode(PROMPT)
    resp = client.completions.create(
        model=MODEL, prompt=ids, echo=True, logprobs=2, max_tokens=4, temperature=0
    )
    expected = offline_llm.generate(
        {"prompt_token_ids": ids}, SamplingParams(temperature=0, max_tokens=4, logprobs=2)
    )[0].outputs[0]
    (choice,) = resp.choices
    assert choice.text == tok.decode(ids, skip_special_tokens=False) + expected.text
    lp = choice.logprobs
    assert lp is not None and lp.token_logprobs is not None and lp.tokens is not None
    assert lp.text_offset is not None
    assert len(lp.tokens) == len(ids) + len(expected.token_ids)
    assert lp.token_logprobs[0] is None
    assert expected.logprobs is not None
    for i, token in enumerate(expected.token_ids):
        got = lp.token_logprobs[len(ids) + i]
        assert got is not None
        assert math.isclose(got, expected.logprobs[i][token].logprob, abs_tol=TOL)
    assert lp.text_offset[len(ids)] == len(PROMPT)
    assert resp.usage is not None and resp.usage.completion_tokens == 4


def test_echo_batch_like_lm_eval(client: openai.OpenAI, offline_llm: LLM) -> None:
    """lm-eval sends token ids with echo, logprobs 1 and max_tokens 1, then reads
    token_logprobs[ctxlen:-1]; a batch answers each prompt in order."""
    tok = offline_llm.get_tokenizer()
    context, continuation = tok.encode("The capital of France"), tok.encode(" is Paris")
    other = tok.encode("One, two, three")
    resp = client.completions.create(
        model=MODEL,
        prompt=[context + continuation, other],
        echo=True,
        logprobs=1,
        max_tokens=1,
        temperature=0,
    )
    assert [c.index for c in resp.choices] == [0, 1]
    first = resp.choices[0].logprobs
    assert first is not None and first.token_logprobs is not None
    assert len(first.token_logprobs) == len(context) + len(continuation) + 1
    scored = first.token_logprobs[len(context) : -1]
    want = offline_scores(offline_llm, context + continuation, 1)[len(context) :]
    texts = [tok.decode([t], skip_special_tokens=False) for t in continuation]
    for got, ref, text in zip(scored, want, texts, strict=True):
        assert got is not None and ref is not None
        assert math.isclose(got, ref[text], abs_tol=TOL)
    second = resp.choices[1]
    assert second.text.startswith("One, two, three") and second.logprobs is not None
    assert second.logprobs.tokens is not None
    assert len(second.logprobs.tokens) == len(other) + 1


def test_echo_without_logprobs_and_max_tokens_zero_alone(
    client: openai.OpenAI, server: ServerProcess
) -> None:
    resp = client.completions.create(model=MODEL, prompt=PROMPT, echo=True, max_tokens=0)
    assert resp.choices[0].text == PROMPT and resp.choices[0].logprobs is None
    with pytest.raises(openai.BadRequestError) as info:
        client.completions.create(model=MODEL, prompt=PROMPT, max_tokens=0)
    assert info.value.status_code == 400 and info.value.param == "max_tokens"
    r = httpx.post(
        f"{server.base_url}/v1/completions",
        json={"model": MODEL, "prompt": PROMPT, "max_tokens": -1, "echo": True},
        timeout=60,
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_tokens"


def test_echo_streams_the_prompt_first(server: ServerProcess, client: openai.OpenAI) -> None:
    body = {
        "model": MODEL,
        "prompt": PROMPT,
        "echo": True,
        "logprobs": 1,
        "max_tokens": 3,
        "temperature": 0,
        "stream": True,
    }
    chunks = events(server, "/v1/completions", body)
    assert chunks[0]["choices"][0]["text"].startswith(PROMPT)
    whole = client.completions.create(**{k: v for k, v in body.items() if k != "stream"})
    assert "".join(c["choices"][0]["text"] for c in chunks) == whole.choices[0].text
    tokens = [t for c in chunks for t in c["choices"][0]["logprobs"]["tokens"]]
    logprobs = whole.choices[0].logprobs
    assert logprobs is not None and tokens == logprobs.tokens
    assert chunks[0]["choices"][0]["logprobs"]["token_logprobs"][0] is None


@pytest.mark.parametrize(
    ("path", "extra"),
    [
        ("/v1/completions", {"prompt": PROMPT}),
        ("/v1/chat/completions", {"messages": [{"role": "user", "content": "Count to five."}]}),
    ],
)
def test_continuous_usage_stats(server: ServerProcess, path: str, extra: dict[str, Any]) -> None:
    """Every chunk carries the usage so far; the last (no choices) the totals."""
    body = {"model": MODEL, "max_tokens": 6, "temperature": 0, "stream": True, **extra}
    body["ignore_eos"] = True
    options = {"include_usage": True, "continuous_usage_stats": True}
    chunks = events(server, path, {**body, "stream_options": options})
    *content, last = chunks
    assert last["choices"] == [] and last["usage"]["completion_tokens"] == 6
    prompt_tokens = last["usage"]["prompt_tokens"]
    seen = 0
    for c in content:
        usage = c["usage"]
        assert usage["prompt_tokens"] == prompt_tokens
        assert usage["total_tokens"] == prompt_tokens + usage["completion_tokens"]
        assert usage["completion_tokens"] >= seen
        seen = usage["completion_tokens"]
    assert seen == 6
    # as in vLLM, continuous_usage_stats alone adds nothing
    plain = events(server, path, {**body, "stream_options": {"continuous_usage_stats": True}})
    assert all("usage" not in c for c in plain)


def test_continuous_usage_with_echo_counts_no_output(server: ServerProcess) -> None:
    options = {"include_usage": True, "continuous_usage_stats": True}
    body = {"model": MODEL, "prompt": PROMPT, "echo": True, "max_tokens": 0, "stream": True}
    chunks = events(server, "/v1/completions", {**body, "stream_options": options})
    assert chunks[0]["choices"][0]["text"] == PROMPT
    assert all(c["usage"]["completion_tokens"] == 0 for c in chunks)
