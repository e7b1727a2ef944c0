"""``heron import``: models from a synthetic Ollama store, verified and hard-linked, then
served with their Go-syntax TEMPLATE and parameters."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import ollama
import pytest

from heron import LLM, SamplingParams
from heron.engine.llm import PromptType, TokensPrompt
from heron.packaged import find_packaged_model
from heron.prompt.gotemplate import render_ollama_prompt
from heron.store.store import ModelStore
from tests.server.conftest import running_server

pytestmark = pytest.mark.slow

CHATML = (
    "{{- range .Messages }}<|im_start|>{{ .Role }}\n{{ .Content }}<|im_end|>\n"
    "{{ end }}<|im_start|>assistant\n"
)


def _blob(root: Path, data: bytes | None = None, src: Path | None = None) -> dict[str, object]:
    if src is not None:
        with src.open("rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        target = root / "blobs" / f"sha256-{digest}"
        if not target.exists():
            try:
                os.link(src, target)
            except OSError:
                shutil.copyfile(src, target)
        size = src.stat().st_size
    else:
        assert data is not None
        digest = hashlib.sha256(data).hexdigest()
        (root / "blobs" / f"sha256-{digest}").write_bytes(data)
        size = len(data)
    return {"digest": f"sha256:{digest}", "size": size}


def _model(root: Path, name: str, gguf: Path, params: dict[str, object]) -> None:
    config = _blob(root, json.dumps({"model_format": "gguf", "model_family": "llama"}).encode())
    layers = [
        {"mediaType": "application/vnd.ollama.image.model", **_blob(root, src=gguf)},
        {"mediaType": "application/vnd.ollama.image.template", **_blob(root, CHATML.encode())},
        {
            "mediaType": "application/vnd.ollama.image.params",
            **_blob(root, json.dumps(params).encode()),
        },
    ]
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", **config},
        "layers": layers,
    }
    path = root / "manifests" / "registry.ollama.ai" / "library" / name / "latest"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(manifest))


def _heron(*args: str, models: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("HERON_", "OLLAMA_"))}
    env["HERON_MODELS"] = str(models)
    cmd = [sys.executable, "-m", "heron.cli", *args]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def ollama_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("ollama")
    (root / "blobs").mkdir()
    gguf = Path(find_packaged_model("smollm2"))
    local = root / "src.gguf"
    shutil.copyfile(gguf, local)  # on the same filesystem as the store, so links work
    _model(root, "smol", local, {"temperature": 0, "num_predict": 6})
    tampered = bytearray(b"GGUF" + os.urandom(64))
    bad = root / "bad.gguf"
    bad.write_bytes(bytes(tampered))
    _model(root, "broken", bad, {})
    blob = root / "blobs" / f"sha256-{hashlib.sha256(bytes(tampered)).hexdigest()}"
    tampered[10] ^= 0xFF
    blob.write_bytes(bytes(tampered))  # the content no longer matches its digest
    return root


def test_import_verifies_links_and_serves(ollama_root: Path, tmp_path: Path) -> None:
    models = ollama_root.parent / (ollama_root.name + "-heron")
    done = _heron("import", "--from", str(ollama_root), models=models)
    assert done.returncode == 1, done.stdout + done.stderr  # "broken" was refused
    assert "imported 'smol:latest'" in done.stdout
    assert "broken" in done.stderr and "smol" not in done.stderr
    store = ModelStore(models)
    assert [m.name.display for m in store.list()] == ["smol:latest"]
    stored = store.get("smol")
    src = next((ollama_root / "blobs").glob(f"sha256-{stored.manifest.layers[0].digest[7:]}"))
    assert store.model_path(stored).stat().st_ino == src.stat().st_ino  # linked, not copied
    assert stored.template == CHATML and stored.parameters["num_predict"] == 6

    listed = _heron("list", models=models)  # no server: the client explains
    assert listed.returncode == 1 and "heron serve" in listed.stderr

    with running_server(model=None, env={"HERON_MODELS": str(models)}) as server:
        client = ollama.Client(host=server.base_url)
        messages = [{"role": "user", "content": "Name a colour."}]
        reply = client.chat("smol", messages)
    assert reply.eval_count == 6  # the imported params layer
    prompt = render_ollama_prompt(CHATML, messages)
    assert prompt == "<|im_start|>user\nName a colour.<|im_end|>\n<|im_start|>assistant\n"
    llm = LLM(
        "smollm2", kv_cache_memory_bytes=32 << 20, quantization="auto", kv_cache_dtype="float16"
    )
    ids = llm.engine.tokenizer.encode(prompt, add_special_tokens=False)
    prompts: list[PromptType] = [TokensPrompt(prompt_token_ids=ids)]
    expected = llm.generate(prompts, SamplingParams(temperature=0, max_tokens=6))[0]
    assert reply.message.content == expected.outputs[0].text
