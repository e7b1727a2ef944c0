"""``heron`` as a client: the version, the verbs, and how failures read."""

from __future__ import annotations

from heron import __version__
from tests.cli.conftest import Heron

VERBS = ("serve", "run", "pull", "list", "ps", "rm", "show", "create", "cp", "stop")


def test_version_and_verbs(no_server: Heron) -> None:
    for flag in ("--version", "-v"):
        r = no_server(flag)
        assert r.returncode == 0 and r.stdout.strip() == f"heron {__version__}"
    r = no_server("--help")
    assert r.returncode == 0
    for verb in VERBS:
        assert f" {verb} " in r.stdout
    r = no_server("serve", "--help")
    assert "--max-loaded-models" in r.stdout and "--keep-alive" in r.stdout


def test_a_bad_serve_option_value_is_a_clear_error(no_server: Heron) -> None:
    r = no_server("serve", "--enable-lora", "--lora-dtype", "bfloat16")
    assert r.returncode == 2
    assert r.stderr.strip() == (
        "error: lora_dtype must be one of auto, float16, float32, got 'bfloat16'"
    ), r.stderr


def test_no_server_is_a_clear_error(no_server: Heron) -> None:
    url = "http://" + no_server.env["HERON_HOST"]
    for args in (("list",), ("ls",), ("ps",), ("show", "smollm2"), ("pull", "smollm2"),
                 ("rm", "x"), ("cp", "a", "b"), ("stop", "smollm2")):  # fmt: skip
        r = no_server(*args)
        assert r.returncode == 1, args
        assert r.stderr.strip() == (
            f"Error: could not connect to a running Heron server at {url}; "
            "start one with `heron serve`"
        ), args
        assert "Traceback" not in r.stderr


def test_server_errors_are_clean(heron: Heron) -> None:
    r = heron("show", "no-such-model")
    assert r.returncode == 1
    assert r.stderr.strip() == "Error: model 'no-such-model' not found"
    r = heron("list", HERON_API_KEY="wrong")
    assert r.returncode == 1
    assert r.stderr.strip() == "Error: invalid or missing API key"
