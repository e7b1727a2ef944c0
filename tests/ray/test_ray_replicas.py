"""``heron serve --ray-address`` on a real two-node Ray cluster on loopback (a head and a
worker, one CPU each, started with ``ray start`` and token authentication) with two replicas
of a tiny random llama: requests through the official client reach both replicas with the
same greedy output, a replica's actor killed with SIGKILL is restarted by Ray and joins the
router again while requests keep being answered, and a rolling restart under traffic has Ray
restart each actor once with no request failing (the cluster: tests/ray/conftest.py)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

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
        _wait_both_serving(server)  # /ready is 200 once one serves; the tests count on both
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


def _replicas(server: ServerProcess) -> dict[str, Any]:
    r = httpx.get(f"{server.base_url}/admin/replicas", timeout=10)
    assert r.status_code == 200, r.text
    (model,) = r.json()["data"]
    return dict(model)


def _actor_pid(where: str) -> int:
    found = re.fullmatch(r"Ray replica \d, node \S+, pid (\d+)", where)
    assert found is not None, where
    return int(found.group(1))


def _wait_both_serving(server: ServerProcess) -> None:
    deadline = time.monotonic() + 120
    while "2 of 2 replicas" not in httpx.get(f"{server.base_url}/ready", timeout=10).text:
        assert time.monotonic() < deadline, "both replicas did not serve"
        time.sleep(0.2)


def test_a_rolling_restart_has_ray_restart_each_actor_once_under_traffic(
    ray_server: ServerProcess,
) -> None:
    _wait_both_serving(ray_server)
    expected = _complete(ray_server, PROMPTS[1])
    before = _replicas(ray_server)
    pids_before = [_actor_pid(r["where"]) for r in before["replicas"]]
    assert set(pids_before) == _engine_actors()
    stop = threading.Event()
    answers: list[str] = []
    failures: list[BaseException] = []

    def user() -> None:
        while not stop.is_set():
            try:
                stream = _client(ray_server).completions.create(
                    model=NAME, prompt=PROMPTS[1], max_tokens=6, temperature=0, stream=True
                )
                answers.append("".join(c.choices[0].text for c in stream if c.choices))
            except Exception as exc:  # any failed request fails the test
                failures.append(exc)

    users = [threading.Thread(target=user, daemon=True) for _ in range(2)]
    for t in users:
        t.start()
    started = httpx.post(f"{ray_server.base_url}/admin/replicas/restart", timeout=10)
    assert started.status_code == 202, started.text
    assert started.json()["order"] == [0, 1]
    pids_seen = [{pid} for pid in pids_before]
    deadline = time.monotonic() + 240
    while True:
        report = _replicas(ray_server)
        states = [r["state"] for r in report["replicas"]]
        assert sum(s != "serving" for s in states) <= 1, states
        for i, r in enumerate(report["replicas"]):
            if r["state"] == "serving":
                pids_seen[i].add(_actor_pid(r["where"]))
        if report["rolling_restart"]["status"] != "running":
            break
        assert time.monotonic() < deadline, report
        time.sleep(0.1)
    stop.set()
    for t in users:
        t.join(60)
    assert report["rolling_restart"]["status"] == "done", report
    assert not failures, failures[:3]
    assert answers and set(answers) == {expected}
    pids_after = [_actor_pid(r["where"]) for r in report["replicas"]]
    for i in range(2):  # Ray started each actor's process again, once
        assert pids_seen[i] == {pids_before[i], pids_after[i]} and pids_after[i] != pids_before[i]
    assert _engine_actors() == set(pids_after)
    assert [r["restarts"]["rolling"] for r in report["replicas"]] == [1, 1]
    assert report["crash_restarts_left"] == before["crash_restarts_left"]
    _wait_both_serving(ray_server)
    assert [_complete(ray_server, PROMPTS[1]) for _ in range(2)] == [expected] * 2
