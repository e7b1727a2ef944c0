"""Modelfile ``ADAPTER`` through Ollama's ``/api/create`` and the official ``ollama`` client:
the adapter's files are uploaded as blobs, stored as adapter layers, checked against the base
model, and the model runs like any other (its own engine, with the adapter on every
request); ``/api/show`` displays it; bad adapters are refused and nothing is written."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import ollama
import pytest

from heron.packaged import find_packaged_model
from heron.store.manifest import MEDIA_ADAPTER
from heron.store.modelfile import parse_modelfile
from heron.store.store import ModelStore
from tests.server.conftest import ServerProcess, running_server
from tests.server.lora_files import corrupt, write_gguf_adapter, write_peft_adapter

pytestmark = pytest.mark.slow

PEFT_FILES = ("adapter_config.json", "adapter_model.safetensors")
OPTIONS = {"num_predict": 8, "temperature": 0}


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    gguf = Path(find_packaged_model("smollm2"))
    for _ in ModelStore(root).create("smollm2", parse_modelfile(f"FROM {gguf}\n"), gguf.parent):
        pass
    return root


@pytest.fixture(scope="module")
def store_server(store_dir: Path) -> Iterator[ServerProcess]:
    args = ("--max-loaded-models", "2", "--kv-cache-memory-mb", "128")
    with running_server(*args, model=None, env={"HERON_MODELS": str(store_dir)}) as server:
        yield server


def _upload(client: ollama.Client, directory: Path) -> dict[str, str]:
    return {name: client.create_blob(directory / name) for name in PEFT_FILES}


def _names(client: ollama.Client) -> set[str]:
    return {m.model or "" for m in client.list().models}


def test_create_show_and_run_a_model_with_an_adapter(
    store_server: ServerProcess, store_dir: Path, tmp_path: Path
) -> None:
    client = ollama.Client(host=store_server.base_url)
    adapters = _upload(client, write_peft_adapter(tmp_path / "a", seed=5))
    statuses = [
        s.status for s in client.create("tuned", from_="smollm2", adapters=adapters, stream=True)
    ]
    assert statuses[-1] == "success", statuses
    assert "checking adapter" in statuses

    stored = ModelStore(store_dir).get("tuned")
    layers = stored.manifest.find(MEDIA_ADAPTER)
    assert sorted(x.name or "" for x in layers) == [f"adapter/{n}" for n in PEFT_FILES]
    assert {x.digest for x in layers} == set(adapters.values())

    show = client.show("tuned")
    assert "\nADAPTER " in (show.modelfile or "")

    base = client.generate("smollm2", "Say hi.", options=OPTIONS).response
    tuned = client.generate("tuned", "Say hi.", options=OPTIONS).response
    assert tuned and tuned != base
    chat = client.chat("tuned", [{"role": "user", "content": "Say hi."}], options=OPTIONS)
    assert chat.message.content


def test_a_gguf_adapter_runs_as_its_peft_twin(store_server: ServerProcess, tmp_path: Path) -> None:
    client = ollama.Client(host=store_server.base_url)
    v_only = write_peft_adapter(tmp_path / "v", seed=8, targets=("v_proj",))
    gguf = write_gguf_adapter(tmp_path / "v.gguf", v_only)
    client.create("v-peft", from_="smollm2", adapters=_upload(client, v_only))
    client.create("v-gguf", from_="smollm2", adapters={"v.gguf": client.create_blob(gguf)})
    modelfile = client.show("v-gguf").modelfile or ""
    assert modelfile.count("\nADAPTER ") == 1
    peft = client.generate("v-peft", "Say hi.", options=OPTIONS).response
    assert client.generate("v-gguf", "Say hi.", options=OPTIONS).response == peft


def test_bad_adapters_are_refused_and_nothing_is_written(
    store_server: ServerProcess, tmp_path: Path
) -> None:
    client = ollama.Client(host=store_server.base_url)
    before = _names(client)
    wrong = _upload(client, write_peft_adapter(tmp_path / "wrong", wrong_shape=True))
    broken = _upload(client, corrupt(write_peft_adapter(tmp_path / "broken", seed=6)))
    some_digest = next(iter(wrong.values()))
    cases = {
        "wrong-shape": wrong,
        "corrupt": broken,
        "not-an-adapter": {"weights.bin": some_digest},
        "half": {"adapter_config.json": some_digest},
        "missing-blob": {"x.gguf": "sha256:" + "0" * 64},
        "bad-digest": {"x.gguf": "sha256:../../etc"},
    }
    for name, adapters in cases.items():
        with pytest.raises(ollama.ResponseError) as info:
            client.create(name, from_="smollm2", adapters=adapters)
        assert info.value.status_code == 400, (name, info.value.error)
    assert _names(client) == before
