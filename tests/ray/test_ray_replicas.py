"""``heron serve --ray-address`` on a real two-node Ray cluster on loopback (a head and a
worker, one CPU each, started with ``ray start`` and token authentication) with two replicas
of a tiny random llama: requests through the official client reach both replicas with the
same greedy output, and a replica's actor killed with SIGKILL is restarted by Ray and joins
the router again while requests keep being answered (the cluster: tests/ray/conftest.py)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

pytest.importorskip("ray", reason="Ray is not installed (pip install 'heron[ray]')")

from tests.models.tiny import build  # noqa: E402
from tests.server.conftest import ServerProcess, running_server  # noqa: E402

pytestmark = pytest.mark.slow

NAME = "tiny-ray"
PROMPTS = [f"Request {i}: the quick brown fox" for i in range(4)]


@pytest.fixture(scope="module")
def ray_server(
    ray_cluster: tuple[str, dict[str, str]], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    address, env = ray_cluster
    model = build("llama3", tmp_path_factory.mktemp("ray") / "hf")
    args = (
        "--ray-address",
        address,
        "--data-parallel-size",
        "2",
        "--router",
        "round-robin",  # each replica in turn: both are exercised
        "--served-model-name",
        NAME,
        "--kv-cache-memory-mb",
        "16",
        "--quantization",
        "none",
    )
    ray_env = {k: v for k, v in env.items() if k.startswith("RAY_")}
    with running_server(*args, model=str(model), env=ray_env) as server:
        server.model = NAME
        yield server
        assert server.stop() == 0  # SIGTERM drains, kills the actors and leaves the cluster


def _client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)


def _complete(server: ServerProcess, prompt: str) -> str:
    out = _client(server).completions.create(model=NAME, prompt=prompt, max_tokens=6, temperature=0)
    assert out.usage is not None and out.usage.completion_tokens == 6
    return out.choices[0].text


def _routed(server: ServerProcess) -> dict[str, float]:
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    pattern = (
        rf'^heron:replica_requests_routed_total\{{model_name="{NAME}",replica="(\d)"\}} (\S+)$'
    )
    return {m[1]: float(m[2]) for m in re.finditer(pattern, text, re.MULTILINE)}


def _engine_actors() -> set[int]:
    """PIDs of the engine actors: Ray titles a worker running a method ``ray::Class.method``."""
    pids = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                if (entry / "cmdline").read_bytes().startswith(b"ray::EngineActor"):
                    pids.add(int(entry.name))
    return pids


def test_two_ray_replicas_serve_the_same_greedy_output(ray_server: ServerProcess) -> None:
    before = _routed(ray_server)
    first = [_complete(ray_server, p) for p in PROMPTS]
    again = [_complete(ray_server, p) for p in PROMPTS]  # round-robin: the other replica
    assert first == again
    stream = _client(ray_server).completions.create(
        model=NAME, prompt=PROMPTS[0], max_tokens=6, temperature=0, stream=True
    )
    assert "".join(chunk.choices[0].text for chunk in stream if chunk.choices) == first[0]
    after = _routed(ray_server)
    for replica in ("0", "1"):
        assert after[replica] - before.get(replica, 0.0) >= 4
    ready = httpx.get(f"{ray_server.base_url}/ready", timeout=10)
    assert ready.status_code == 200 and "2 of 2 replicas" in ready.text
    assert len(_engine_actors()) == 2


def test_a_killed_actor_is_restarted_by_ray_and_rejoins(ray_server: ServerProcess) -> None:
    expected = _complete(ray_server, PROMPTS[0])
    actors = _engine_actors()
    assert len(actors) == 2
    victim = min(actors)
    os.kill(victim, signal.SIGKILL)
    # Requests keep being answered by the surviving replica while Ray restarts the other.
    answers, down_seen = [], False
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        answers.append(_complete(ray_server, PROMPTS[0]))
        ready = httpx.get(f"{ray_server.base_url}/ready", timeout=10).text
        down_seen = down_seen or "1 of 2 replicas" in ready
        if down_seen and "2 of 2 replicas" in ready:
            break
        time.sleep(0.2)
    assert down_seen, "the killed replica never left the rotation"
    assert "2 of 2 replicas" in ready, f"the replica did not come back: {ready}"
    assert answers and all(a == expected for a in answers)
    restarted = _engine_actors()
    assert len(restarted) == 2 and victim not in restarted
    # Both replicas answer again, alike.
    before = _routed(ray_server)
    assert [_complete(ray_server, PROMPTS[0]) for _ in range(4)] == [expected] * 4
    after = _routed(ray_server)
    assert all(after[r] > before.get(r, 0.0) for r in ("0", "1"))
