"""The adapter registry's rules without a server: names, the path policy of run-time loading
(allowed directories, symlinks, traversal), ids never reused, and the spec a request naming
an adapter resolves to."""

from __future__ import annotations

from pathlib import Path

import pytest

from heron.server.adapters import AdapterRegistry, parse_lora_option
from heron.server.common import APIError
from heron.server.model_spec import ModelSpec


def _base() -> ModelSpec:
    return ModelSpec(
        name="smollm2",
        path="/models/smollm2.gguf",
        digest="ab" * 32,
        size=1,
        modified_at=0.0,
        system="Be brief.",
        aliases=frozenset({"smollm2", "smollm2:latest"}),
    )


def _status(exc: pytest.ExceptionInfo[APIError]) -> int:
    return exc.value.status


def test_an_adapter_resolves_to_the_base_model_with_its_request(tmp_path: Path) -> None:
    registry = AdapterRegistry()
    first = registry.add("SQL", str(tmp_path), rank=8)
    spec = registry.spec("sql", _base())
    assert spec is not None
    assert (spec.name, spec.base, spec.lora, spec.path) == ("SQL", "smollm2", first, _base().path)
    assert spec.system == "Be brief." and spec.digest is None and spec.matches("sql")
    assert registry.spec("other", _base()) is None and registry.spec("sql", None) is None
    registry.remove("sql")
    second = registry.add("sql", str(tmp_path), rank=8)
    assert second.int_id > first.int_id  # never reused: no shared engine copy or cache
    with pytest.raises(APIError) as exc:
        registry.remove("nope")
    assert _status(exc) == 404


def test_names_are_checked(tmp_path: Path) -> None:
    registry = AdapterRegistry()
    registry.add("taken", str(tmp_path), rank=8)
    for name in ("", "../x", " x", "a b", "x" * 129, "taken", "TAKEN", "smollm2:latest"):
        with pytest.raises(APIError) as exc:
            registry.check_new(name, _base())
        assert _status(exc) == 400, name
    with pytest.raises(APIError, match="command line"):
        registry.check_new("fine", None)
    registry.check_new("org/sql-v2:latest", _base())


def test_run_time_paths_stay_inside_the_allowed_directories(tmp_path: Path) -> None:
    allowed, outside = tmp_path / "allowed", tmp_path / "outside"
    (allowed / "a").mkdir(parents=True)
    outside.mkdir()
    (allowed / "out").symlink_to(outside, target_is_directory=True)
    (allowed / "in").symlink_to(allowed / "a", target_is_directory=True)
    registry = AdapterRegistry([str(allowed)])
    assert registry.dynamic
    assert registry.allowed_path(str(allowed / "a")) == str((allowed / "a").resolve())
    assert registry.allowed_path(str(allowed / "in")) == str((allowed / "a").resolve())
    for path, status in (
        (str(outside), 403),
        (str(allowed / "out"), 403),
        (f"{allowed}/../outside", 400),
        (f"{allowed}/a/../../outside", 400),
        ("a", 400),
        (str(allowed / "missing"), 400),
        (str(tmp_path / "missing"), 403),  # outside: its existence is never told
        ("", 400),
        (str(allowed / "a") + "\x00", 400),
    ):
        with pytest.raises(APIError) as exc:
            registry.allowed_path(path)
        assert _status(exc) == status, path


def test_run_time_loading_is_off_without_a_directory(tmp_path: Path) -> None:
    registry = AdapterRegistry()
    assert not registry.dynamic
    with pytest.raises(APIError, match="--lora-dir") as exc:
        registry.allowed_path(str(tmp_path))
    assert _status(exc) == 403
    with pytest.raises(ValueError, match="not a directory"):
        AdapterRegistry([str(tmp_path / "missing")])


def test_lora_option() -> None:
    assert parse_lora_option("sql=/a/b=c") == ("sql", "/a/b=c")
    for bad in ("sql", "=path", "sql=", "sql= "):
        with pytest.raises(ValueError, match="name=path"):
            parse_lora_option(bad)
