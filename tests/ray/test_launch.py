"""``heron serve --ray-address``'s checks before any cluster work: a MODEL is required, Ray
must be installed (a clear error otherwise, not a traceback), and ``--ray-listen`` takes an
IPv4 address with an optional port, warning about a public one."""

from __future__ import annotations

import logging
import sys

import pytest

from heron.ray.launch import parse_listen, run_server_on_ray
from heron.server.serve import ServeConfig


def test_a_model_is_required() -> None:
    with pytest.raises(ValueError, match="MODEL"):
        run_server_on_ray(ServeConfig(), "127.0.0.1:6379", 1, None)


def test_without_ray_the_error_says_how_to_install_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` fails as if not installed
    monkeypatch.delitem(sys.modules, "heron.ray.placement", raising=False)
    with pytest.raises(ValueError, match=r"heron\[ray\]"):
        run_server_on_ray(ServeConfig(model="smollm2"), "127.0.0.1:6379", 1, None)


def test_listen_addresses(caplog: pytest.LogCaptureFixture) -> None:
    assert parse_listen(None) == (None, 0)
    assert parse_listen("10.0.0.1") == ("10.0.0.1", 0)
    assert parse_listen("10.0.0.1:7000") == ("10.0.0.1", 7000)
    for bad in ("node-a:7000", "[::1]:7000"):
        with pytest.raises(ValueError, match="IPv4"):
            parse_listen(bad)
    with caplog.at_level(logging.WARNING, logger="heron.ray.launch"):
        parse_listen("10.0.0.1")
        assert not caplog.records
        parse_listen("0.0.0.0")
        parse_listen("8.8.8.8")
    assert len(caplog.records) == 2
