"""ModelStore.create: from a GGUF file, an HF directory, uploaded blobs, or a stored model."""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from heron.loader.gguf import GGUFFile
from heron.store import ModelfileError, ModelNotFoundError, ModelStore, parse_modelfile
from heron.store.adapters import check_adapter_files
from heron.store.create import CreateError
from heron.store.manifest import MEDIA_FILE, MEDIA_MODEL, MEDIA_PARAMS, MEDIA_SYSTEM

MODELFILE = '''FROM ./model.gguf
TEMPLATE """{{ .System }} {{ .Prompt }}"""
SYSTEM You are a heron.
PARAMETER temperature 0.2
PARAMETER stop <|end|>
PARAMETER stop <|eot|>
MESSAGE user hello
MESSAGE assistant hi
LICENSE MIT
'''


def statuses(it: Any) -> list[str]:
    return [s["status"] for s in it]


def upload(store: ModelStore, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    with store.blobs.writer(digest, len(data)) as w:
        if not w.done:
            w.write(data)
        w.commit()
    return digest


def test_create_from_gguf_path(store: ModelStore, tiny_gguf: Callable[..., Path]) -> None:
    src = tiny_gguf()
    steps = statuses(store.create("tiny:v1", parse_modelfile(MODELFILE), base_dir=src.parent))
    assert steps[0] == "parsing modelfile"
    assert steps[-2:] == ["writing manifest", "success"]
    assert all(s.startswith("creating new layer sha256:") for s in steps[1:-2])
    m = store.get("tiny:v1")
    assert m.format == "gguf" and m.family == "llama"
    assert m.config["file_type"] == "ALL_F32" and m.config["model_format"] == "gguf"
    assert m.parameters == {"temperature": 0.2, "stop": ["<|end|>", "<|eot|>"]}
    assert m.template == "{{ .System }} {{ .Prompt }}" and m.system == "You are a heron."
    assert m.messages == [
        {"role": "user", "content": "hello"},
        {"role": "assistant", "content": "hi"},
    ]
    assert m.license == ["MIT"]
    path = store.model_path(m)
    assert path.read_bytes() == src.read_bytes()
    assert path.stat().st_ino != src.stat().st_ino  # a user's file is copied, not linked
    with GGUFFile(path) as g:
        assert g.architecture == "llama"
    assert m.size == sum(x.size for x in m.manifest.layers) + m.manifest.config.size
    # the same model again: every layer exists already
    steps = statuses(store.create("tiny:v2", parse_modelfile(MODELFILE), base_dir=src.parent))
    assert all(s.startswith("using existing layer") for s in steps[1:-2])


def test_create_from_stored_model_reuses_layers(
    store: ModelStore, tiny_gguf: Callable[..., Path]
) -> None:
    src = tiny_gguf()
    list(store.create("base", parse_modelfile(MODELFILE), base_dir=src.parent))
    base = store.get("base")
    mf = parse_modelfile(
        "FROM base\nSYSTEM Be brief.\nPARAMETER temperature 0.9\nPARAMETER top_k 5"
    )
    steps = statuses(store.create("child", mf))
    weights = base.manifest.find(MEDIA_MODEL)[0].digest
    assert f"using existing layer {weights}" in steps
    child = store.get("child")
    assert child.manifest.find(MEDIA_MODEL) == base.manifest.find(MEDIA_MODEL)
    assert child.manifest.config == base.manifest.config
    assert child.system == "Be brief."
    assert child.template == base.template and child.messages == base.messages
    assert child.parameters == {"temperature": 0.9, "stop": ["<|end|>", "<|eot|>"], "top_k": 5}
    assert child.license == ["MIT"]
    assert len(child.manifest.find(MEDIA_SYSTEM)) == 1


def test_missing_base_model(store: ModelStore) -> None:
    with pytest.raises(ModelNotFoundError, match="pull or create it first"):
        list(store.create("x", parse_modelfile("FROM nothing-here")))


def test_an_adapter_that_is_not_one_is_refused_before_anything_runs(
    store: ModelStore, tiny_gguf: Callable[..., Path]
) -> None:
    src = tiny_gguf()
    (src.parent / "lora.gguf").write_bytes(b"not a GGUF file")
    (src.parent / "peft").mkdir()
    (src.parent / "peft" / "adapter_config.json").write_text("{}")
    for adapter, problem in (
        ("./lora.gguf", "not a GGUF LoRA file"),
        ("./missing", "no such file or directory"),
        ("./peft", "adapter_model.safetensors missing"),
    ):
        mf = parse_modelfile(f"FROM ./model.gguf\nADAPTER {adapter}\n")
        with pytest.raises(ValueError, match=problem):
            store.create("x", mf, base_dir=src.parent)
    mf = parse_modelfile("FROM ./model.gguf\nADAPTER ./a\nADAPTER ./b\n")
    with pytest.raises(ValueError, match="one ADAPTER per model"):
        store.create("x", mf, base_dir=src.parent)
    with pytest.raises(ValueError, match="from a local Modelfile only"):
        store.create("x", parse_modelfile("FROM m\nADAPTER ./lora.gguf\n"))
    assert store.list() == [] and store.blobs.digests() == []


def test_uploaded_adapter_files_are_checked(store: ModelStore) -> None:
    digest = "sha256:" + "a" * 64
    peft = {"adapter_config.json": digest, "adapter_model.safetensors": digest}
    assert check_adapter_files({"lora.gguf": digest}) == {"lora.gguf": digest}
    assert check_adapter_files(peft) == peft
    for files in (
        {"weights.bin": digest},
        {"a.gguf": digest, "b.gguf": digest},
        {"adapter_config.json": digest},
        {**peft, "README.md": digest},
        {"lora.gguf": "sha256:../x"},
    ):
        with pytest.raises(ValueError, match="adapters: "):
            check_adapter_files(files)
    with pytest.raises(ValueError, match="adapters: "):
        store.create("x", parse_modelfile("FROM m"), adapters={"weights.bin": digest})


def test_bad_target_name_is_refused_eagerly(store: ModelStore) -> None:
    with pytest.raises(ValueError, match="invalid model name"):
        store.create("../evil", parse_modelfile("FROM m"))


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"GGUF",
        b"NOPE" + b"\0" * 40,
        # version 3, n_tensors = 2**64 - 1, n_kv = 0
        b"GGUF" + (3).to_bytes(4, "little") + b"\xff" * 8 + b"\0" * 8,
        # n_kv = 1 with a key length of 2**63
        b"GGUF" + (3).to_bytes(4, "little") + b"\0" * 8 + (1).to_bytes(8, "little") + b"\xff" * 8,
    ],
)
def test_crafted_gguf_is_refused_and_nothing_stored(
    store: ModelStore, tmp_path: Path, content: bytes
) -> None:
    (tmp_path / "model.gguf").write_bytes(content)
    with pytest.raises(CreateError, match="not a valid GGUF file"):
        list(store.create("bad", parse_modelfile("FROM ./model.gguf"), base_dir=tmp_path))
    assert store.list() == [] and store.blobs.digests() == []
    assert os.listdir(store.blobs.partial_dir) == []


def test_truncated_gguf_is_refused(
    store: ModelStore, tiny_gguf: Callable[..., Path], tmp_path: Path
) -> None:
    data = tiny_gguf().read_bytes()
    (tmp_path / "cut.gguf").write_bytes(data[: len(data) - 20])
    with pytest.raises(CreateError):
        list(store.create("bad", parse_modelfile("FROM ./cut.gguf"), base_dir=tmp_path))
    assert store.blobs.digests() == []


def test_from_path_needs_base_dir(store: ModelStore, tiny_gguf: Callable[..., Path]) -> None:
    src = tiny_gguf()
    with pytest.raises(CreateError, match="not a model name"):
        list(store.create("x", parse_modelfile(f"FROM {src}")))  # HTTP callers pass no base_dir
    with pytest.raises(CreateError, match="no such file"):
        list(store.create("x", parse_modelfile("FROM ./missing.gguf"), base_dir=src.parent))


def test_create_from_uploaded_gguf_blob(store: ModelStore, tiny_gguf: Callable[..., Path]) -> None:
    digest = upload(store, tiny_gguf().read_bytes())
    mf = parse_modelfile("FROM ignored\nSYSTEM hi")
    steps = statuses(store.create("up", mf, files={"model.gguf": digest}))
    assert f"using existing layer {digest}" in steps and steps[-1] == "success"
    m = store.get("up")
    assert m.manifest.find(MEDIA_MODEL)[0].digest == digest and m.system == "hi"


def test_create_from_uploaded_crafted_gguf(store: ModelStore) -> None:
    digest = upload(store, b"GGUF" + b"\xff" * 40)
    with pytest.raises(CreateError, match="not a valid GGUF"):
        list(store.create("bad", parse_modelfile("FROM x"), files={"m.gguf": digest}))
    assert store.list() == []


@pytest.mark.parametrize(
    ("files", "match"),
    [
        ({"model.gguf": "sha256:../../etc/passwd"}, "invalid digest"),
        ({"../model.gguf": "sha256:" + "a" * 64}, "invalid layer name"),
        ({"/etc/passwd": "sha256:" + "a" * 64}, "invalid layer name"),
        ({"model.gguf": "sha256:" + "a" * 64}, "not in the store"),
    ],
)
def test_bad_files(store: ModelStore, files: dict[str, str], match: str) -> None:
    with pytest.raises(CreateError, match=match):
        list(store.create("x", parse_modelfile("FROM x"), files=files))


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from tests.models.tiny import build

    directory = build("llama3", tmp_path_factory.mktemp("hf") / "tiny-llama")
    (directory / "1_Pooling").mkdir()
    (directory / "1_Pooling" / "config.json").write_text('{"pooling_mode_mean_tokens": true}')
    (directory / "README.md").write_text("not stored")
    (directory / ".cache").mkdir()
    (directory / ".cache" / "junk.json").write_text("{}")
    return directory


def test_create_from_hf_directory(store: ModelStore, tiny_hf: Path, tmp_path: Path) -> None:
    directory = tmp_path / "model"
    shutil.copytree(tiny_hf, directory)
    (directory / "pytorch_model.bin").write_bytes(b"pickle, never stored")
    list(store.create("tiny-hf", parse_modelfile("FROM ./model"), base_dir=tmp_path))
    m = store.get("tiny-hf")
    assert m.format == "safetensors" and m.family == "llama"
    names = sorted(x.name or "" for x in m.manifest.find(MEDIA_FILE))
    assert names == sorted(
        ["1_Pooling/config.json", "config.json", "generation_config.json", "model.safetensors"]
        + ["tokenizer.json", "tokenizer_config.json"]
    )
    path = store.model_path(m)
    assert path.parent == store.root / "tmp" / "dirs"
    for name in names:
        assert (path / name).read_bytes() == (directory / name).read_bytes()
    assert not (path / "pytorch_model.bin").exists() and not (path / "README.md").exists()
    from heron.loader import load_checkpoint

    ckpt = load_checkpoint(path)
    assert ckpt.config.vocab_size == 258
    assert sum(1 for _ in ckpt.weights()) > 0


def test_hf_directory_with_only_pickles_is_refused(store: ModelStore, tmp_path: Path) -> None:
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "config.json").write_text('{"model_type": "llama"}')
    (directory / "pytorch_model.bin").write_bytes(b"\x80\x04pickle")
    with pytest.raises(CreateError, match="pickle"):
        list(store.create("x", parse_modelfile("FROM ./model"), base_dir=tmp_path))
    assert store.blobs.digests() == []


def test_hf_directory_with_a_crafted_safetensors_is_refused(
    store: ModelStore, tmp_path: Path
) -> None:
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "config.json").write_text('{"model_type": "llama"}')
    header = b'{"w": {"dtype": "F32", "shape": [4], "data_offsets": [0, 1000000]}}'
    (directory / "model.safetensors").write_bytes(len(header).to_bytes(8, "little") + header)
    with pytest.raises(CreateError, match="data_offsets"):
        list(store.create("x", parse_modelfile("FROM ./model"), base_dir=tmp_path))
    (directory / "model.safetensors").write_bytes((1 << 62).to_bytes(8, "little"))
    with pytest.raises(CreateError, match="out of bounds"):
        list(store.create("x", parse_modelfile("FROM ./model"), base_dir=tmp_path))
    assert store.blobs.digests() == []


def test_hf_directory_symlink_escaping_is_refused(store: ModelStore, tmp_path: Path) -> None:
    directory = tmp_path / "model"
    directory.mkdir()
    (directory / "config.json").write_text('{"model_type": "llama"}')
    secret = tmp_path / "secret.json"
    secret.write_text("{}")
    (directory / "tokenizer.json").symlink_to(secret)
    with pytest.raises(CreateError, match="outside"):
        list(store.create("x", parse_modelfile("FROM ./model"), base_dir=tmp_path))


def test_create_from_uploaded_hf_files(store: ModelStore, tiny_hf: Path) -> None:
    files = {
        name: upload(store, (tiny_hf / name).read_bytes())
        for name in ["config.json", "model.safetensors", "tokenizer.json"]
    }
    list(store.create("up-hf", parse_modelfile("FROM x"), files=files))
    m = store.get("up-hf")
    assert m.format == "safetensors"
    assert (store.model_path(m) / "config.json").read_bytes() == (
        tiny_hf / "config.json"
    ).read_bytes()
    bad = {**files, "pytorch_model.bin": files["config.json"]}
    with pytest.raises(CreateError, match="pickle"):
        list(store.create("x", parse_modelfile("FROM x"), files=bad))


def test_params_layer_is_json(store: ModelStore, tiny_gguf: Callable[..., Path]) -> None:
    src = tiny_gguf()
    list(store.create("p", parse_modelfile(MODELFILE), base_dir=src.parent))
    layer = store.get("p").manifest.find(MEDIA_PARAMS)[0]
    assert store.blobs.path(layer.digest).read_bytes() == (
        b'{"temperature":0.2,"stop":["<|end|>","<|eot|>"]}'
    )


def test_to_modelfile_recreates_the_model(
    store: ModelStore, tiny_gguf: Callable[..., Path]
) -> None:
    src = tiny_gguf()
    list(store.create("orig", parse_modelfile(MODELFILE), base_dir=src.parent))
    orig = store.get("orig")
    mf = parse_modelfile(orig.to_modelfile().render())
    assert mf.from_ == "orig:latest"
    list(store.create("again", mf))
    again = store.get("again")
    assert again.manifest == orig.manifest


@pytest.mark.parametrize(
    ("template", "match"),
    [
        ("{{ if .System }}" * 150 + "x" + "{{ end }}" * 150, "nesting deeper"),
        ("{{ if .System }}{{ .System }}", "end"),
        ("{{ .Prompt ", "unterminated|does not parse"),
        ("{% for m in messages %}{{ m.content }}", "does not parse"),
    ],
    ids=["go-nested-150", "go-unterminated-if", "go-unterminated-action", "jinja-unclosed-for"],
)
def test_broken_template_is_refused_before_anything_is_stored(
    store: ModelStore, tiny_gguf: Callable[..., Path], template: str, match: str
) -> None:
    gguf = tiny_gguf()
    modelfile = parse_modelfile(f'FROM {gguf}\nTEMPLATE """{template}"""\n')
    with pytest.raises(ModelfileError, match=f"TEMPLATE.*({match})"):
        store.create("broken", modelfile, base_dir=gguf.parent)
    assert store.list() == []
