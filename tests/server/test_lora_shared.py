"""A stored model with a Modelfile ``ADAPTER`` on a server that runs adapters: it runs on the
already loaded engine of its base model (mixed into that engine's batches, as ``--lora``
adapters are) rather than loading a copy of the base; ``/api/tags`` lists it like any model
and ``/v1/models`` names its base as ``parent``."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import pytest

from heron.packaged import find_packaged_model
from heron.store.modelfile import parse_modelfile
from heron.store.store import ModelStore
from tests.server.conftest import ServerProcess, running_server
from tests.server.lora_files import write_peft_adapter

pytestmark = pytest.mark.slow

OPTIONS = {"num_predict": 8, "temperature": 0}


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("models")
    gguf = Path(find_packaged_model("smollm2"))
    store = ModelStore(root)
    for _ in store.create("smollm2", parse_modelfile(f"FROM {gguf}\n"), gguf.parent):
        pass
    adapter = write_peft_adapter(root.parent / "adapter", seed=5)
    modelfile = parse_modelfile(f"FROM {gguf}\nADAPTER {adapter}\n")
    for _ in store.create("tuned", modelfile, root.parent):
        pass
    return root


@pytest.fixture(scope="module")
def shared_server(store_dir: Path) -> Iterator[ServerProcess]:
    # the command line's stored model, with adapters on (two slots)
    args = ("--enable-lora", "--max-loras", "2", "--kv-cache-memory-mb", "128")
    with running_server(*args, model="smollm2", env={"HERON_MODELS": str(store_dir)}) as server:
        yield server


def test_the_adapter_model_runs_on_its_base_models_engine(shared_server: ServerProcess) -> None:
    client = ollama.Client(host=shared_server.base_url)
    base = client.generate("smollm2", "Say hi.", options=OPTIONS).response
    tuned = client.generate("tuned", "Say hi.", options=OPTIONS).response
    assert tuned and tuned != base
    # one engine: the base model's
    assert [m.model for m in client.ps().models] == ["smollm2:latest"]
    again = client.chat("tuned", [{"role": "user", "content": "Say hi."}], options=OPTIONS)
    assert again.message.content
    assert [m.model for m in client.ps().models] == ["smollm2:latest"]
    assert client.generate("tuned", "Say hi.", options=OPTIONS).response == tuned


def test_tags_and_models_list_the_adapter_model(shared_server: ServerProcess) -> None:
    client = ollama.Client(host=shared_server.base_url)
    assert {"smollm2:latest", "tuned:latest"} <= {m.model for m in client.list().models}
    cards = httpx.get(f"{shared_server.base_url}/v1/models").json()["data"]
    by_id = {c["id"]: c for c in cards}
    assert by_id["tuned:latest"]["parent"] == "smollm2:latest"
    assert by_id["smollm2:latest"].get("parent") is None
    shown = client.show("tuned")
    assert "\nADAPTER " in (shown.modelfile or "")
