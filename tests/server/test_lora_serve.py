"""LoRA adapters on ``heron serve smollm2 --lora ... --lora-dir ...``: the ``model`` field
naming an adapter routes every API family's request to the base model with that adapter;
``/v1/models`` lists adapters with their parent; adapters load and unload at run time from
allowed directories only, behind the API key; bad adapters change nothing; metrics count
them. Official clients against a real server; the adapter is a random rank-8 PEFT one."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import anthropic
import httpx
import ollama
import openai
import pytest
from prometheus_client.parser import text_string_to_metric_families

from heron import LLM, SamplingParams
from heron.lora import LoRARequest
from tests.server.conftest import MODEL, ServerProcess, free_port, running_server
from tests.server.lora_files import corrupt, write_gguf_adapter, write_peft_adapter

pytestmark = pytest.mark.slow

API_KEY = "lora-test-key"
PROMPT = "The capital of France is"
HI = [{"role": "user", "content": "Say hi."}]


@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("lora")
    allowed = root / "allowed"
    outside = write_peft_adapter(root / "outside" / "evil", seed=9)
    allowed.mkdir()
    (allowed / "link").symlink_to(outside, target_is_directory=True)
    v_only = write_peft_adapter(root / "v-only", seed=4, targets=("v_proj",))
    return {
        "v_peft": v_only,
        "v_gguf": write_gguf_adapter(root / "v-only.gguf", v_only),
        "tuned": write_peft_adapter(root / "tuned", seed=1),
        "allowed": allowed,
        "outside": outside,
        "dyn": write_peft_adapter(allowed / "dyn", seed=2),
        "wrong_shape": write_peft_adapter(allowed / "wrong", wrong_shape=True),
        "rank32": write_peft_adapter(allowed / "rank32", rank=32),
        "corrupt": corrupt(write_peft_adapter(allowed / "corrupt", seed=3)),
        # finite, but past float16's 65504 in the default float16 slots
        "huge": write_peft_adapter(allowed / "huge", seed=4, scale=1e6),
    }


@pytest.fixture(scope="module")
def lora_server(paths: dict[str, Path]) -> Iterator[ServerProcess]:
    args = ("--kv-cache-memory-mb", "128", "--lora", f"tuned={paths['tuned']}")
    args += ("--lora", f"v-peft={paths['v_peft']}", "--lora", f"v-gguf={paths['v_gguf']}")
    args += ("--lora-dir", str(paths["allowed"]), "--max-lora-rank", "16")
    with running_server(*args, api_key=API_KEY) as server:
        yield server


def _openai(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=API_KEY, max_retries=0)


def _complete(client: openai.OpenAI, model: str) -> str:
    reply = client.completions.create(model=model, prompt=PROMPT, max_tokens=12, temperature=0)
    return reply.choices[0].text


def _post(
    server: ServerProcess, route: str, body: dict[str, object], key: bool = True
) -> httpx.Response:
    headers = {"Authorization": f"Bearer {API_KEY}"} if key else {}
    return httpx.post(f"{server.base_url}{route}", json=body, headers=headers, timeout=60)


def _ids(server: ServerProcess) -> list[str]:
    return [m.id for m in _openai(server).models.list()]


# ------------------------------------------------------------------------- routing
def test_models_lists_the_adapter_with_its_parent(
    lora_server: ServerProcess, paths: dict[str, Path]
) -> None:
    client = _openai(lora_server)
    cards = {m.id: m for m in client.models.list()}
    assert {MODEL, "tuned"} <= set(cards)
    tuned = cards["tuned"].model_dump()
    assert tuned["parent"] == MODEL
    assert tuned["root"] == str(paths["tuned"].resolve())
    assert cards[MODEL].model_dump().get("parent") is None
    assert client.models.retrieve("tuned").model_dump()["parent"] == MODEL


def test_the_adapter_changes_the_output(lora_server: ServerProcess) -> None:
    client = _openai(lora_server)
    base, tuned = _complete(client, MODEL), _complete(client, "tuned")
    assert tuned and tuned != base
    assert _complete(client, "tuned") == tuned  # greedy: the same again


def test_the_adapter_matches_the_offline_engine(
    lora_server: ServerProcess, paths: dict[str, Path]
) -> None:
    client = _openai(lora_server)
    llm = LLM(MODEL, kv_cache_memory_bytes=64 << 20, quantization="auto", enable_lora=True)
    params = SamplingParams(temperature=0, max_tokens=12)
    assert llm.generate(PROMPT, params)[0].outputs[0].text == _complete(client, MODEL)
    lora = LoRARequest("tuned", 1, str(paths["tuned"].resolve()))
    offline = llm.generate(PROMPT, params, lora_request=lora)[0].outputs[0].text
    assert offline == _complete(client, "tuned")


def test_a_gguf_adapter_serves_as_its_peft_twin(lora_server: ServerProcess) -> None:
    client = _openai(lora_server)
    gguf, peft = _complete(client, "v-gguf"), _complete(client, "v-peft")
    assert gguf == peft != _complete(client, MODEL)


def test_every_api_family_routes_the_adapter(
    lora_server: ServerProcess, paths: dict[str, Path]
) -> None:
    client = _openai(lora_server)

    def chat(model: str) -> str | None:
        reply = client.chat.completions.create(
            model=model,
            messages=HI,  # type: ignore[arg-type]
            max_tokens=12,
            temperature=0,
        )
        return reply.choices[0].message.content

    def responses(model: str) -> str:
        reply = client.responses.create(
            model=model, input="Say hi.", max_output_tokens=12, temperature=0
        )
        return reply.output_text

    ant = anthropic.Anthropic(base_url=lora_server.base_url, api_key=API_KEY, max_retries=0)

    def messages(model: str) -> str:
        reply = ant.messages.create(
            model=model,
            messages=HI,  # type: ignore[arg-type]
            max_tokens=12,
            extra_body={"temperature": 0},  # this SDK's create() takes no sampling arguments
        )
        return "".join(b.text for b in reply.content if b.type == "text")

    oll = ollama.Client(host=lora_server.base_url, headers={"Authorization": f"Bearer {API_KEY}"})
    options = {"num_predict": 12, "temperature": 0}

    def ollama_chat(model: str) -> str:
        return oll.chat(model=model, messages=HI, options=options).message.content or ""

    def ollama_generate(model: str) -> str:
        return oll.generate(model=model, prompt="Say hi.", options=options).response

    for ask in (chat, responses, messages, ollama_chat, ollama_generate):
        base, tuned = ask(MODEL), ask("tuned")
        assert tuned and tuned != base, ask.__name__
    show = oll.show("tuned")
    assert f"FROM {MODEL}\nADAPTER {paths['tuned'].resolve()}\n" in (show.modelfile or "")
    assert show.details is not None and show.details.parent_model == MODEL


def test_metrics_count_adapters_and_their_requests(lora_server: ServerProcess) -> None:
    _complete(_openai(lora_server), "tuned")
    text = httpx.get(
        f"{lora_server.base_url}/metrics", headers={"Authorization": f"Bearer {API_KEY}"}
    ).text
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    loaded = samples[("heron:lora_adapters_loaded", (("model_name", MODEL),))]
    assert loaded >= 1
    key = ("heron:lora_requests_total", (("adapter", "tuned"), ("model_name", MODEL)))
    assert samples[key] >= 1


# ------------------------------------------------------------------------- dynamic
def test_load_use_and_unload_an_adapter(lora_server: ServerProcess, paths: dict[str, Path]) -> None:
    client = _openai(lora_server)
    body = {"lora_name": "dyn", "lora_path": str(paths["dyn"])}
    r = _post(lora_server, "/v1/load_lora_adapter", body)
    assert r.status_code == 200, r.text
    assert "dyn" in _ids(lora_server)
    assert _complete(client, "dyn") not in (_complete(client, "tuned"), _complete(client, MODEL))
    again = _post(lora_server, "/v1/load_lora_adapter", body)
    assert again.status_code == 400
    assert "already been loaded" in again.json()["error"]["message"]
    r = _post(lora_server, "/v1/unload_lora_adapter", {"lora_name": "dyn"})
    assert r.status_code == 200, r.text
    assert "dyn" not in _ids(lora_server)
    with pytest.raises(openai.NotFoundError):
        _complete(client, "dyn")
    r = _post(lora_server, "/v1/unload_lora_adapter", {"lora_name": "dyn"})
    assert r.status_code == 404 and "cannot be found" in r.json()["error"]["message"]


def test_paths_outside_the_allowed_directories_are_refused(
    lora_server: ServerProcess, paths: dict[str, Path]
) -> None:
    before = _ids(lora_server)
    allowed = paths["allowed"]
    cases = [
        (str(paths["outside"]), 403),
        (f"{allowed}/../outside/evil", 400),  # a traversal, refused before it resolves
        (str(allowed / "link"), 403),  # a symlink inside that points outside
        ("dyn", 400),  # relative
        (str(allowed / "missing"), 400),
        ("/etc/passwd", 403),
    ]
    for path, status in cases:
        r = _post(lora_server, "/v1/load_lora_adapter", {"lora_name": "x", "lora_path": path})
        assert r.status_code == status, (path, r.text)
        assert r.json()["error"]["message"], path
    assert _ids(lora_server) == before
    body = {"lora_name": "x", "lora_path": str(paths["dyn"])}
    assert _post(lora_server, "/v1/load_lora_adapter", body, key=False).status_code == 401
    assert (
        _post(lora_server, "/v1/unload_lora_adapter", {"lora_name": "tuned"}, key=False).status_code
        == 401
    )
    extra = {**body, "load_inplace": True}
    r = _post(lora_server, "/v1/load_lora_adapter", extra)
    assert r.status_code == 400 and "load_inplace" in r.json()["error"]["message"]
    bad_name = {"lora_name": "../x", "lora_path": str(paths["dyn"])}
    assert _post(lora_server, "/v1/load_lora_adapter", bad_name).status_code == 400
    taken = {"lora_name": MODEL, "lora_path": str(paths["dyn"])}
    assert _post(lora_server, "/v1/load_lora_adapter", taken).status_code == 400
    assert _ids(lora_server) == before


def test_bad_adapters_are_refused_and_change_nothing(
    lora_server: ServerProcess, paths: dict[str, Path]
) -> None:
    before = _ids(lora_server)
    for name in ("wrong_shape", "rank32", "corrupt", "huge"):
        body = {"lora_name": name, "lora_path": str(paths[name])}
        r = _post(lora_server, "/v1/load_lora_adapter", body)
        assert r.status_code == 400, (name, r.text)
        assert f"invalid LoRA adapter '{name}'" in r.json()["error"]["message"]
    assert "exceeds float16's range" in r.json()["error"]["message"]
    assert _ids(lora_server) == before
    assert _complete(_openai(lora_server), "tuned")


def test_dynamic_loading_is_off_without_a_lora_dir(server: ServerProcess) -> None:
    for route, body in (
        ("/v1/load_lora_adapter", {"lora_name": "x", "lora_path": "/tmp/x"}),
        ("/v1/unload_lora_adapter", {"lora_name": "x"}),
    ):
        r = httpx.post(f"{server.base_url}{route}", json=body, timeout=30)
        assert r.status_code == 403, r.text
        assert "--lora-dir" in r.json()["error"]["message"]
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0)
    with pytest.raises(openai.NotFoundError):
        client.completions.create(model="x", prompt="Hi", max_tokens=1)


# ------------------------------------------------------------------------- startup
def _serve(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HERON_")}
    cmd = [sys.executable, "-m", "heron.cli", "serve", "--port", str(free_port()), *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


def test_bad_lora_options_stop_the_server(paths: dict[str, Path]) -> None:
    r = _serve(MODEL, "--lora", "no-equals-sign")
    assert r.returncode == 2 and "--lora takes name=path" in r.stderr
    r = _serve(MODEL, "--lora", "x=/nonexistent/adapter")
    assert r.returncode == 2 and "no such file or directory" in r.stderr
    r = _serve("--lora-dir", str(paths["allowed"]))
    assert r.returncode == 2 and "name one" in r.stderr
    r = _serve(MODEL, "--lora", f"w={paths['wrong_shape']}")
    assert r.returncode == 2 and f"--lora w={paths['wrong_shape']}" in r.stderr
