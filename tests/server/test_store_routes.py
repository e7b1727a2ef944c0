"""The store behind ``heron serve``: models listed from the store, loaded on first request,
unloaded when keep_alive runs out or to stay under the cap, Modelfile defaults, and Ollama's
management routes through the official ``ollama`` client."""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from heron import LLM, SamplingParams
from heron.packaged import find_packaged_model
from heron.store.modelfile import parse_modelfile
from heron.store.store import ModelStore
from tests.server.conftest import ServerProcess, running_server

pytestmark = pytest.mark.slow

SYSTEM = "You are a pirate. Answer every question as a pirate would."


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with smollm2 (hardlinked from the installed package) and a derived model."""
    root = tmp_path_factory.mktemp("models")
    store = ModelStore(root)
    gguf = Path(find_packaged_model("smollm2"))
    for _ in store.create("smollm2", parse_modelfile(f"FROM {gguf}\n"), base_dir=gguf.parent):
        pass
    text = (
        f'FROM smollm2\nSYSTEM """{SYSTEM}"""\nPARAMETER temperature 0\nPARAMETER num_predict 12\n'
    )
    for _ in store.create("pirate", parse_modelfile(text)):
        pass
    return root


@pytest.fixture(scope="module")
def store_server(store_dir: Path) -> Iterator[ServerProcess]:
    with running_server(
        "--max-loaded-models", "1", model=None, env={"HERON_MODELS": str(store_dir)}
    ) as server:
        yield server


def _client(server: ServerProcess) -> ollama.Client:
    return ollama.Client(host=server.base_url)


def _loaded(server: ServerProcess) -> list[str]:
    return [m.model for m in _client(server).ps().models]


def test_lists_the_store_and_nothing_is_loaded_at_start(store_server: ServerProcess) -> None:
    names = sorted(m.model for m in _client(store_server).list().models)
    assert names == ["pirate:latest", "smollm2:latest"]
    assert _loaded(store_server) == []


def test_first_request_loads_and_the_cap_evicts(store_server: ServerProcess) -> None:
    client = _client(store_server)
    out = client.generate("smollm2", "Say hi.", options={"num_predict": 4, "temperature": 0})
    assert out.done and out.eval_count == 4
    assert _loaded(store_server) == ["smollm2:latest"]
    client.generate("pirate", "Say hi.", options={"num_predict": 2})
    assert _loaded(store_server) == ["pirate:latest"]  # --max-loaded-models 1


def test_keep_alive_expiry_unloads(store_server: ServerProcess) -> None:
    client = _client(store_server)
    client.generate("smollm2", "Hi", options={"num_predict": 1}, keep_alive="1s")
    assert _loaded(store_server) == ["smollm2:latest"]
    deadline = time.monotonic() + 10
    while _loaded(store_server) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _loaded(store_server) == []


def test_stop_unloads_at_once(store_server: ServerProcess) -> None:
    client = _client(store_server)
    client.generate("smollm2", "Hi", options={"num_predict": 1}, keep_alive=-1)
    ps = client.ps().models
    assert ps[0].expires_at is not None and ps[0].expires_at.year > 2200  # for ever
    client.generate("smollm2", "", keep_alive=0)
    assert _loaded(store_server) == []


def test_modelfile_system_and_parameters_shape_the_output(
    store_server: ServerProcess, offline_llm: LLM
) -> None:
    question = "What is your favourite food?"
    reply = _client(store_server).chat("pirate", [{"role": "user", "content": question}])
    assert reply.eval_count == 12  # PARAMETER num_predict 12
    expected = (
        offline_llm.chat(
            [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
            SamplingParams(temperature=0, max_tokens=12),  # PARAMETER temperature 0
        )[0]
        .outputs[0]
        .text
    )
    assert reply.message.content == expected
    # Request options win over the Modelfile's parameters.
    short = _client(store_server).chat(
        "pirate", [{"role": "user", "content": question}], options={"num_predict": 3}
    )
    assert short.eval_count == 3
    shown = httpx.post(f"{store_server.base_url}/api/show", json={"model": "pirate"}).json()
    assert shown["system"] == SYSTEM and f'SYSTEM """{SYSTEM}"""' in shown["modelfile"]
    assert "num_predict" in shown["parameters"] and "temperature" in shown["parameters"]


def test_openai_route_applies_modelfile_defaults(store_server: ServerProcess) -> None:
    body = {"model": "pirate", "messages": [{"role": "user", "content": "Hello"}]}
    r = httpx.post(f"{store_server.base_url}/v1/chat/completions", json=body, timeout=120)
    assert r.status_code == 200
    assert r.json()["usage"]["completion_tokens"] <= 12


def test_copy_and_delete_with_the_ollama_client(store_server: ServerProcess) -> None:
    client = _client(store_server)
    client.copy("smollm2", "mine/smol:v1")
    names = {m.model for m in client.list().models}
    assert "mine/smol:v1" in names
    client.delete("mine/smol:v1")
    assert "mine/smol:v1" not in {m.model for m in client.list().models}
    with pytest.raises(ollama.ResponseError) as err:
        client.delete("mine/smol:v1")
    assert err.value.status_code == 404


@pytest.mark.parametrize("name", ["../x", "/etc/passwd", "a\x00b", "..", "a/b/c/d", "x" * 300])
def test_path_like_names_are_refused(store_server: ServerProcess, name: str) -> None:
    for method, path, body in (
        ("POST", "/api/pull", {"model": name}),
        ("POST", "/api/create", {"model": name, "from": "smollm2"}),
        ("POST", "/api/copy", {"source": "smollm2", "destination": name}),
        ("DELETE", "/api/delete", {"model": name}),
        ("POST", "/api/show", {"model": name}),
    ):
        r = httpx.request(method, store_server.base_url + path, json=body, timeout=30)
        assert r.status_code in (400, 404), (path, r.status_code, r.text)
        assert "error" in r.json()


def test_blob_upload_checks_the_digest(store_server: ServerProcess, tmp_path: Path) -> None:
    data = os.urandom(4096)
    good = "sha256:" + hashlib.sha256(data).hexdigest()
    bad = "sha256:" + hashlib.sha256(b"other").hexdigest()
    base = store_server.base_url
    assert httpx.head(f"{base}/api/blobs/{good}").status_code == 404
    r = httpx.post(f"{base}/api/blobs/{bad}", content=data)
    assert r.status_code == 400 and "digest" in r.json()["error"]
    assert httpx.head(f"{base}/api/blobs/{bad}").status_code == 404
    assert httpx.post(f"{base}/api/blobs/{good}", content=data).status_code == 201
    assert httpx.head(f"{base}/api/blobs/{good}").status_code == 200
    for digest in ("sha256:../../etc/passwd", "sha256:XYZ", "md5:" + "0" * 32):
        assert httpx.head(f"{base}/api/blobs/{digest}").status_code in (400, 404)
        assert httpx.post(f"{base}/api/blobs/{digest}", content=b"x").status_code in (400, 404)


def test_create_from_uploaded_gguf(store_server: ServerProcess) -> None:
    """What `heron create -f Modelfile` does with FROM ./file.gguf: upload, then create."""
    gguf = Path(find_packaged_model("smollm2"))
    digest = "sha256:" + hashlib.sha256(gguf.read_bytes()).hexdigest()
    base = store_server.base_url
    if httpx.head(f"{base}/api/blobs/{digest}").status_code != 200:
        with gguf.open("rb") as f:
            assert (
                httpx.post(f"{base}/api/blobs/{digest}", content=f, timeout=120).status_code == 201
            )
    client = _client(store_server)
    client.create("uploaded", files={"model.gguf": digest}, system="Be brief.")
    assert "uploaded:latest" in {m.model for m in client.list().models}
    shown = httpx.post(f"{store_server.base_url}/api/show", json={"model": "uploaded"}).json()
    assert shown["system"] == "Be brief."
    client.delete("uploaded")


def test_pull_unknown_model_is_a_clear_error(store_server: ServerProcess) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        _client(store_server).pull("no-such-model-here")
    assert "not found" in str(err.value)


def test_pull_tamper_and_repair_with_the_ollama_client(
    store_server: ServerProcess, store_dir: Path
) -> None:
    """A real pull from the package index; a flipped byte in the stored GGUF is found by the
    next pull, which fetches that layer again."""
    client = _client(store_server)
    statuses = [p.status for p in client.pull("smollm2:135m", stream=True)]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert "verifying sha256 digest" in statuses
    assert "smollm2:135m" in {m.model for m in client.list().models}

    store = ModelStore(store_dir)
    stored = store.get("smollm2:135m")
    gguf = stored.manifest.layers[0]
    blob = store.blobs.path(gguf.digest)
    blob.chmod(0o644)
    with blob.open("r+b") as f:
        f.seek(gguf.size // 2)
        byte = f.read(1)
        f.seek(gguf.size // 2)
        f.write(bytes([byte[0] ^ 0xFF]))
    assert store.verify("smollm2:135m") == [gguf.digest]  # the tamper is detected

    repaired = list(client.pull("smollm2:135m", stream=True))
    assert repaired[-1].status == "success"
    # the layer is fetched again (its progress counts the wheel bytes it comes from)
    assert any(p.digest == gguf.digest and p.completed == p.total for p in repaired)
    assert store.verify("smollm2:135m") == []
    client.delete("smollm2:135m")
