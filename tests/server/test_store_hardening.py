"""A hostile client against the store routes of a real ``heron serve`` on 127.0.0.1: broken
templates at create time, and concurrent, stalled and abandoned blob uploads."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.server.conftest import ServerProcess, running_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def store_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("models")


@pytest.fixture(scope="module")
def store_server(store_dir: Path) -> Iterator[ServerProcess]:
    with running_server(model=None, env={"HERON_MODELS": str(store_dir)}) as server:
        yield server


@pytest.mark.parametrize(
    ("template", "match"),
    [
        ("{{ if .System }}" * 150 + "x" + "{{ end }}" * 150, "nesting deeper than 100"),
        ("{{ if .System }}{{ .System }}", "end"),
        ("{% for m in messages %}", "does not parse"),
    ],
    ids=["go-nested-150", "go-unterminated", "jinja-unclosed"],
)
@pytest.mark.parametrize("stream", [True, False])
def test_create_refuses_a_broken_template_with_400(
    store_server: ServerProcess, template: str, match: str, stream: bool
) -> None:
    body = {"model": "broken", "from": "smollm2", "template": template, "stream": stream}
    r = httpx.post(f"{store_server.base_url}/api/create", json=body, timeout=30)
    assert r.status_code == 400, r.text
    assert "TEMPLATE" in r.json()["error"] and match in r.json()["error"]
