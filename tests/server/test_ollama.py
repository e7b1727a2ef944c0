"""Ollama's API on a real ``heron serve``, driven by the official ``ollama`` client and httpx."""

from __future__ import annotations

import hashlib
import json
import os
import re
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import ollama
import pytest

import heron
from heron import LLM, SamplingParams
from heron.packaged import find_packaged_model
from heron.prompt import ChatRenderer
from tests.server.conftest import ServerProcess

PROMPT = "Why is the sky blue?"
RFC3339_NANO = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$")
GREEDY = {"temperature": 0, "num_predict": 12}


@pytest.fixture(scope="module")
def client(server: ServerProcess) -> ollama.Client:
    return ollama.Client(host=server.base_url, timeout=120)


def post(server: ServerProcess, path: str, body: Any, **kw: Any) -> httpx.Response:
    return httpx.post(f"{server.base_url}{path}", json=body, timeout=120, **kw)


def ndjson_lines(response: httpx.Response) -> list[dict[str, Any]]:
    return [json.loads(line) for line in response.text.splitlines() if line.strip()]


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def assert_final_stats(final: Any, num_prompt: int, num_output: int) -> None:
    assert final["done"] is True
    assert final["prompt_eval_count"] == num_prompt
    assert final["eval_count"] == num_output
    for key in ("total_duration", "load_duration", "prompt_eval_duration", "eval_duration"):
        assert isinstance(final[key], int) and final[key] > 0, key
    # nanoseconds: a request on this machine takes well over 1 ms and well under 10 minutes
    assert 1_000_000 < final["total_duration"] < 600 * 10**9
    parts = final["load_duration"] + final["prompt_eval_duration"] + final["eval_duration"]
    assert parts <= final["total_duration"]


# ---------------------------------------------------------------------- model routes
def test_root_and_version(server: ServerProcess) -> None:
    r = httpx.get(f"{server.base_url}/")
    assert r.status_code == 200 and r.text == "Ollama is running"
    assert httpx.head(f"{server.base_url}/").status_code == 200
    r = httpx.get(f"{server.base_url}/api/version")
    assert r.json() == {"version": heron.__version__}
    assert httpx.head(f"{server.base_url}/api/version").status_code == 200


def test_tags(server: ServerProcess, client: ollama.Client) -> None:
    path = find_packaged_model("smollm2")
    listed = client.list().models
    assert len(listed) == 1
    model = listed[0]
    assert model.model == "smollm2:latest"
    assert model.size == os.path.getsize(path)
    with open(path, "rb") as f:
        assert model.digest == hashlib.file_digest(f, "sha256").hexdigest()
    assert model.details is not None
    assert model.details.format == "gguf"
    assert model.details.family == "llama" and model.details.families == ["llama"]
    assert model.details.quantization_level == "Q4_1"
    assert model.details.parameter_size == "134.52M"
    raw = httpx.get(f"{server.base_url}/api/tags").json()["models"][0]
    assert raw["name"] == "smollm2:latest" and RFC3339_NANO.match(raw["modified_at"])
    assert httpx.head(f"{server.base_url}/api/tags").status_code == 200


def test_show(server: ServerProcess, client: ollama.Client) -> None:
    shown = client.show("smollm2")
    assert shown.capabilities == ["completion"]
    assert shown.template is not None and "<|im_start|>" in shown.template
    assert shown.modelfile is not None and "FROM smollm2:latest" in shown.modelfile
    assert shown.parameters is not None and "stop" in shown.parameters
    assert shown.details is not None and shown.details.format == "gguf"
    info = shown.modelinfo or {}
    assert info["general.architecture"] == "llama"
    assert info["llama.context_length"] == 8192
    assert info["tokenizer.ggml.tokens"] == []  # large arrays only with verbose
    assert "tokenizer.chat_template" not in info and "general.name" not in info
    # the older "name" spelling, and verbose
    verbose = post(server, "/api/show", {"name": "smollm2:latest", "verbose": True}).json()
    assert len(verbose["model_info"]["tokenizer.ggml.tokens"]) == 49152


def test_ps_follows_keep_alive(server: ServerProcess, client: ollama.Client) -> None:
    def expiry() -> datetime | None:
        models = client.ps().models
        return models[0].expires_at if models else None

    unloaded = client.generate(model="smollm2", prompt="", keep_alive=0)
    assert unloaded.done and unloaded.done_reason == "unload" and unloaded.response == ""
    assert expiry() is None

    loaded = client.generate(model="smollm2", prompt="", keep_alive="10m")
    assert loaded.done_reason == "load"
    until = expiry()
    assert until is not None
    assert abs(until - (datetime.now(UTC) + timedelta(minutes=10))) < timedelta(seconds=30)
    ps = client.ps().models[0]
    assert ps.model == "smollm2:latest" and ps.size_vram == 0 and ps.context_length
    assert ps.size is not None and ps.size > 0

    assert client.chat(model="smollm2", messages=[], keep_alive=0).done_reason == "unload"
    assert expiry() is None
    forever = client.chat(model="smollm2", messages=[], keep_alive=-1)
    assert forever.done_reason == "load" and forever.message.role == "assistant"
    until = expiry()
    assert until is not None and until.year > 2200

    # a request with keep_alive 0 unloads once it is done; the next request loads again
    client.generate(model="smollm2", prompt="Hi", keep_alive=0, options={"num_predict": 1})
    assert expiry() is None
    client.generate(model="smollm2", prompt="Hi", options={"num_predict": 1})
    until = expiry()
    assert until is not None and until > datetime.now(UTC)


# ------------------------------------------------------------------------ generation
def test_generate_non_streaming(client: ollama.Client, offline_llm: LLM) -> None:
    tok = offline_llm.get_tokenizer()
    prompt_ids = ChatRenderer(tok).encode(user(PROMPT))
    r = client.generate(
        model="smollm2", prompt=PROMPT, options={"temperature": 0, "num_predict": 8}
    )
    assert r.model == "smollm2"
    assert r.created_at is not None and RFC3339_NANO.match(r.created_at)
    assert r.done_reason == "length"
    assert r.response
    assert_final_stats(r, len(prompt_ids), 8)
    # context: the prompt's tokens and the output's, to continue the conversation
    assert r.context is not None and list(r.context[: len(prompt_ids)]) == prompt_ids
    assert len(r.context) == len(prompt_ids) + 8
    assert tok.decode(r.context[len(prompt_ids) :]) == r.response


def test_generate_streaming_ndjson(server: ServerProcess) -> None:
    body = {"model": "smollm2", "prompt": PROMPT, "options": {"temperature": 0, "num_predict": 8}}
    r = post(server, "/api/generate", body)  # stream defaults to true
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("application/x-ndjson")
    lines = ndjson_lines(r)
    *chunks, final = lines
    assert chunks and all(c["done"] is False and "done_reason" not in c for c in chunks)
    assert all(c["model"] == "smollm2" and RFC3339_NANO.match(c["created_at"]) for c in lines)
    assert final["response"] == "" and final["done_reason"] == "length"
    assert final["eval_count"] == 8 and "context" in final
    whole = post(server, "/api/generate", {**body, "stream": False}).json()
    assert "".join(c["response"] for c in chunks) == whole["response"]
    assert whole["context"] == final["context"]


def test_chat_streaming_and_not(client: ollama.Client, offline_llm: LLM) -> None:
    messages = [{"role": "system", "content": "You are terse."}, *user("Name a colour.")]
    num_prompt = len(ChatRenderer(offline_llm.get_tokenizer()).encode(messages))
    parts = list(client.chat(model="smollm2", messages=messages, options=GREEDY, stream=True))
    *chunks, final = parts
    assert all(not p.done and p.message.role == "assistant" for p in chunks)
    assert final.done and final.message.content == "" and final.done_reason in ("stop", "length")
    whole = client.chat(model="smollm2", messages=messages, options=GREEDY)
    assert whole.message.role == "assistant"
    assert "".join(p.message.content or "" for p in chunks) == whole.message.content
    assert whole.eval_count == final.eval_count
    assert_final_stats(whole, num_prompt, whole.eval_count or 0)


def test_greedy_matches_offline_llm(client: ollama.Client, offline_llm: LLM) -> None:
    params = SamplingParams(temperature=0, max_tokens=16)
    tok = offline_llm.get_tokenizer()
    messages = user("Write a haiku about herons.")
    expected = offline_llm.generate(
        {"prompt_token_ids": ChatRenderer(tok).encode(messages)}, params
    )
    chat = client.chat(
        model="smollm2", messages=messages, options={"temperature": 0, "num_predict": 16}
    )
    assert chat.message.content == expected[0].outputs[0].text
    assert chat.eval_count == len(expected[0].outputs[0].token_ids)

    raw = "The capital of France is"
    expected = offline_llm.generate(raw, params)
    r = client.generate(
        model="smollm2", prompt=raw, raw=True, options={"temperature": 0, "num_predict": 16}
    )
    assert r.response == expected[0].outputs[0].text
    assert r.prompt_eval_count == len(tok.encode(raw))
    assert r.context is None  # raw mode returns no context


def test_debug_render_only(server: ServerProcess, offline_llm: LLM) -> None:
    tok = offline_llm.get_tokenizer()
    body = {"model": "smollm2", "system": "Be brief.", "prompt": PROMPT, "_debug_render_only": True}
    r = post(server, "/api/generate", body).json()
    messages = [{"role": "system", "content": "Be brief."}, *user(PROMPT)]
    assert r["debug_info"]["rendered_template"] == ChatRenderer(tok).render(messages)
    assert r["done"] is False and "eval_count" not in r
    body = {"model": "smollm2", "messages": messages, "_debug_render_only": True}
    r = post(server, "/api/chat", body).json()
    assert r["debug_info"]["rendered_template"] == ChatRenderer(tok).render(messages)


def test_stop_option_and_num_predict(client: ollama.Client) -> None:
    base = client.generate(model="smollm2", prompt=PROMPT, options={**GREEDY, "num_predict": 16})
    assert base.done_reason == "length" and base.eval_count == 16
    text = base.response or ""
    words = text.split()
    stop = words[len(words) // 2]
    options = {**GREEDY, "num_predict": 16, "stop": [stop]}
    cut = client.generate(model="smollm2", prompt=PROMPT, options=options)
    assert cut.done_reason == "stop"
    assert cut.response == text[: text.index(stop)]  # the stop string is not returned


def test_context_continues_a_conversation(client: ollama.Client, offline_llm: LLM) -> None:
    first = client.generate(model="smollm2", prompt="My name is Ada.", options=GREEDY)
    assert first.context
    second = client.generate(
        model="smollm2", prompt="What is my name?", context=first.context, options=GREEDY
    )
    follow_up = ChatRenderer(offline_llm.get_tokenizer()).encode(user("What is my name?"))
    assert second.prompt_eval_count == len(first.context) + len(follow_up)
    assert second.context is not None and list(second.context[: len(first.context)]) == list(
        first.context
    )


def test_logprobs(client: ollama.Client) -> None:
    r = client.generate(
        model="smollm2",
        prompt=PROMPT,
        options={"temperature": 0, "num_predict": 5},
        logprobs=True,
        top_logprobs=3,
    )
    assert r.logprobs is not None and len(r.logprobs) == 5
    text = ""
    for lp in r.logprobs:
        assert lp.logprob <= 0
        top = lp.top_logprobs or []
        assert len(top) == 3
        assert [t.logprob for t in top] == sorted((t.logprob for t in top), reverse=True)
        assert top[0].token == lp.token  # greedy picks the most likely token
        text += lp.token
    assert text == r.response
    streamed = list(
        client.chat(
            model="smollm2",
            messages=user(PROMPT),
            options={"temperature": 0, "num_predict": 4},
            logprobs=True,
            stream=True,
        )
    )
    entries = [lp for part in streamed for lp in (part.logprobs or [])]
    assert len(entries) == 4 and all(not lp.top_logprobs for lp in entries)


def test_legacy_and_unknown_options_are_accepted(client: ollama.Client) -> None:
    options = {
        "num_predict": 2,
        "temperature": 0.7,
        "top_k": 20,
        "top_p": 0.8,
        "min_p": 0.05,
        "seed": 42,
        "repeat_penalty": 1.1,
        "repeat_last_n": 64,
        "presence_penalty": 0.1,
        "frequency_penalty": 0.1,
        "typical_p": 1.0,
        "num_keep": 4,
        "num_ctx": 2048,
        "num_batch": 512,
        "num_gpu": 1,
        "main_gpu": 0,
        "use_mmap": True,
        "num_thread": 2,
        "low_vram": False,
        "f16_kv": True,
        "logits_all": False,
        "vocab_only": False,
        "use_mlock": False,
        "numa": False,
        "mirostat": 0,
        "mirostat_tau": 5.0,
        "mirostat_eta": 0.1,
        "tfs_z": 1.0,
        "penalize_newline": True,
        "some_future_option": "ignored",
    }
    r = client.generate(model="smollm2", prompt="Hi", options=options, keep_alive="1h30m")
    assert r.done and r.eval_count == 2
    # the same seed gives the same sample
    again = client.generate(model="smollm2", prompt="Hi", options=options)
    assert again.response == r.response


def test_model_names(client: ollama.Client) -> None:
    for name in ("smollm2", "smollm2:latest", "SmolLM2:Latest"):
        r = client.generate(model=name, prompt="Hi", options={"num_predict": 1})
        assert r.done and r.model == name


def test_curl_style_form_content_type(server: ServerProcess) -> None:
    """``curl -d`` sends application/x-www-form-urlencoded; Ollama reads the JSON anyway."""
    body = json.dumps({"model": "smollm2", "prompt": "Hi", "stream": False, "options": GREEDY})
    r = httpx.post(
        f"{server.base_url}/api/generate",
        content=body,
        headers={"content-type": "application/x-www-form-urlencoded"},
        timeout=60,
    )
    assert r.status_code == 200 and r.json()["done"] is True


def test_metrics_recorded_once_per_request(server: ServerProcess) -> None:
    def counter(name: str) -> float:
        text = httpx.get(f"{server.base_url}/metrics").text
        m = re.search(rf"^{re.escape(name)}\{{[^}}]*\}} ([0-9.e+-]+)$", text, re.M)
        return float(m.group(1)) if m else 0.0

    before = counter("heron:generation_tokens_total")
    prompts = counter("heron:prompt_tokens_total")
    r = post(server, "/api/chat", {"model": "smollm2", "messages": user("Hi"), "options": GREEDY})
    final = ndjson_lines(r)[-1]
    assert "context" not in final  # only /api/generate returns a context
    assert counter("heron:generation_tokens_total") - before == final["eval_count"]
    assert counter("heron:prompt_tokens_total") - prompts == final["prompt_eval_count"]


def test_streaming_disconnect_aborts(server: ServerProcess) -> None:
    def running() -> float:
        text = httpx.get(f"{server.base_url}/metrics").text
        m = re.search(r"^heron:num_requests_running\{[^}]*\} ([0-9.e+-]+)$", text, re.M)
        return float(m.group(1)) if m else -1.0

    body = {"model": "smollm2", "prompt": "Tell me a long story.", "options": {"num_predict": 500}}
    with (
        httpx.Client(timeout=60) as http,
        http.stream("POST", f"{server.base_url}/api/generate", json=body) as r,
    ):
        for i, _ in enumerate(r.iter_lines()):
            if i >= 2:
                break
    deadline = time.monotonic() + 10
    while running() != 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert running() == 0
