"""``pull``, and ``run`` pulling what the store lacks, on a server with a store of its own that
starts empty (no model given to ``serve``)."""

from __future__ import annotations

import re
from collections.abc import Iterator

import pytest

from tests.cli.conftest import Heron, cli_env
from tests.server.conftest import running_server

pytestmark = pytest.mark.slow

STATUS_TAIL = ["verifying sha256 digest", "writing manifest", "removing any unused layers",
               "success"]  # fmt: skip


@pytest.fixture(scope="module")
def fresh(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Heron]:
    store = tmp_path_factory.mktemp("fresh-models")
    args = ("--kv-cache-memory-mb", "256", "--max-tokens", "4")
    with running_server(*args, model=None, env={"HERON_MODELS": str(store)}) as server:
        yield Heron(cli_env(server.port, store, api_key=None))


def names(listing: str) -> list[str]:
    return [line.split()[0] for line in listing.splitlines()[1:]]


def _forget(heron: Heron, model: str) -> None:
    if f"{model}:latest" in names(heron("list").stdout):
        r = heron("rm", model)
        assert r.returncode == 0, r.stderr
    assert f"{model}:latest" not in names(heron("list").stdout)


@pytest.mark.network
def test_pull_then_list(fresh: Heron) -> None:
    _forget(fresh, "smollm2")
    r = fresh("pull", "smollm2")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0] == "pulling manifest"
    # a progress bar per layer, with its size
    assert any(re.match(r"pulling [0-9a-f]{12} .* MB", line) for line in lines), r.stderr
    assert lines[-4:] == STATUS_TAIL
    listing = fresh("list")
    assert listing.returncode == 0
    assert listing.stdout.splitlines()[0].split() == ["NAME", "ID", "SIZE", "MODIFIED"]
    assert re.search(r"^smollm2:latest\s+[0-9a-f]{12}\s+\d+ MB\s+.+ ago$", listing.stdout, re.M)
    # the same listing, but for MODIFIED ("1 second ago"), which may move on between the calls
    same = [line.split()[:4] for line in listing.stdout.splitlines()]
    assert [line.split()[:4] for line in fresh("ls").stdout.splitlines()] == same


def test_pull_failures(fresh: Heron) -> None:
    for name in ("no-such-model-anywhere", "../escape", "/etc/passwd"):
        r = fresh("pull", name)
        assert r.returncode == 1, name
        assert r.stderr.rstrip().splitlines()[-1].startswith("Error: "), r.stderr
        assert "Traceback" not in r.stderr


@pytest.mark.network
def test_run_pulls_a_missing_model(fresh: Heron) -> None:
    _forget(fresh, "smollm2")
    r = fresh("run", "smollm2", "Hi", "--verbose")
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    assert lines[0] == "pulling manifest", r.stderr
    assert lines[lines.index("success") - 3 : lines.index("success") + 1] == STATUS_TAIL
    assert r.stdout.strip()
    assert re.search(r"^eval count:\s+[1-4] token\(s\)$", r.stderr, re.M)
    assert "smollm2:latest" in names(fresh("list").stdout)
    # rm of a loaded model unloads it first
    assert any(line.startswith("smollm2:latest") for line in fresh("ps").stdout.splitlines())
    r = fresh("rm", "smollm2")
    assert r.returncode == 0, r.stderr
    assert not any(line.startswith("smollm2") for line in fresh("ps").stdout.splitlines())
