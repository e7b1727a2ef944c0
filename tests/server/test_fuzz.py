"""Schemathesis fuzzes every documented operation of a real server; no 5xx is allowed.

The server runs with small caps (max_tokens 4) so that valid fuzzed requests finish fast.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error

from tests.server.conftest import ServerProcess, running_server

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def fuzz_server() -> Iterator[ServerProcess]:
    with running_server("--kv-cache-memory-mb", "64", "--max-tokens", "4", "--max-n", "2") as s:
        yield s


@pytest.fixture(scope="module")
def api_schema(fuzz_server: ServerProcess) -> schemathesis.BaseSchema:
    schema = schemathesis.openapi.from_url(f"{fuzz_server.base_url}/openapi.json")
    schema.config.base_url = fuzz_server.base_url
    return schema


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=True,
)
def test_no_server_errors(case: schemathesis.Case) -> None:
    case.call_and_validate(checks=[not_a_server_error])
