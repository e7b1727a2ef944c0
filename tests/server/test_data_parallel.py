"""``heron serve --data-parallel-size 2`` on a tiny random llama, with the official client:
greedy output equals one engine's, multi-turn conversations return to the replica holding
their history (``cached_tokens``), per-replica metrics, and a replica killed mid-run: no
hang, its requests end with a clear error, the rest succeed, it comes back; a rolling restart
(the admin API, then SIGHUP) under streaming traffic fails no request and replaces each
replica's process once."""

from __future__ import annotations

import json
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

from tests.models.tiny import build
from tests.server.conftest import ServerProcess, running_server

pytestmark = pytest.mark.slow

NAME = "tiny-dp"
TEMPLATE = (
    "{%- for message in messages -%}<|{{ message.role }}|>{{ message.content }}</s>"
    "{%- endfor -%}{%- if add_generation_prompt -%}<|assistant|>{%- endif -%}"
)
BLOCK = 8  # the KV cache's default block size
ARGS = ("--served-model-name", NAME, "--kv-cache-memory-mb", "16")
PROMPTS = [
    f"Prompt {i}: " + "the quick brown fox jumps over the lazy dog " * (i + 1) for i in range(6)
]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = build("llama3", tmp_path_factory.mktemp("dp") / "hf")
    config_path = directory / "tokenizer_config.json"
    config = json.loads(config_path.read_text())
    config_path.write_text(json.dumps({**config, "chat_template": TEMPLATE}))
    return directory


def wait_all_replicas(server: ServerProcess, timeout: float = 180.0) -> None:
    """Until /ready says both replicas serve: /ready turns 200 as soon as one does, and a
    test that counts where requests go needs both (the second may still be loading on a
    busy machine)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if httpx.get(f"{server.base_url}/ready", timeout=5).text == "ready (2 of 2 replicas)":
            return
        time.sleep(0.2)
    pytest.fail("both replicas did not come up")


@pytest.fixture(scope="module")
def dp_server(model_dir: Path) -> Iterator[ServerProcess]:
    with running_server(*ARGS, "--data-parallel-size", "2", model=str(model_dir)) as server:
        server.model = NAME
        wait_all_replicas(server)
        yield server


def client(server: ServerProcess) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="none", max_retries=0)


def metric(server: ServerProcess, name: str, replica: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    pattern = rf'^heron:{name}\{{model_name="{NAME}",replica="{replica}"\}} (\S+)$'
    found = re.search(pattern, text, re.MULTILINE)
    assert found is not None, f"{name} for replica {replica} missing"
    return float(found.group(1))


def completions(server: ServerProcess) -> list[list[str]]:
    oai = client(server)
    out = []
    for prompt in PROMPTS:
        r = oai.completions.create(
            model=NAME, prompt=prompt, max_tokens=24, temperature=0, logprobs=1
        )
        assert r.choices[0].logprobs is not None
        out.append(list(r.choices[0].logprobs.tokens or []))
    return out


def test_greedy_output_equals_one_engine(dp_server: ServerProcess, model_dir: Path) -> None:
    replicated = completions(dp_server)
    routed = [metric(dp_server, "replica_requests_routed_total", r) for r in "01"]
    assert routed == [3, 3], routed  # distinct prompts on idle replicas: turns alternate
    with running_server(*ARGS, model=str(model_dir)) as single:
        single.model = NAME
        assert completions(single) == replicated
        # one engine: no replica series at all, and nothing to roll onto
        assert "heron:replica_up{" not in httpx.get(f"{single.base_url}/metrics").text
        refused = httpx.post(f"{single.base_url}/admin/replicas/restart", timeout=10)
        assert refused.status_code == 409, refused.text
        assert "one engine replica" in refused.json()["error"]["message"]


def test_multi_turn_conversations_stay_on_their_replica(dp_server: ServerProcess) -> None:
    oai = client(dp_server)
    routed_before = [metric(dp_server, "replica_requests_routed_total", r) for r in "01"]
    conversations: list[list[dict[str, str]]] = [
        [{"role": "user", "content": f"Conversation {c}: tell me about topic {c * 37} " * 3}]
        for c in range(4)
    ]
    for turn in range(3):  # interleaved: every conversation's turn before the next turn
        for history in conversations:
            r = oai.chat.completions.create(
                model=NAME,
                messages=history,  # type: ignore[arg-type]
                max_tokens=12,
                temperature=0,
            )
            usage = r.usage
            assert usage is not None and usage.prompt_tokens_details is not None
            cached = usage.prompt_tokens_details.cached_tokens or 0
            if turn == 0:  # only the head all openings share: "<|user|>Conversation "
                assert cached <= 2 * BLOCK
            else:
                # the previous turn's prompt (a prefix of this one) is cached here: every
                # full block of it (the reply re-renders from text, so it may differ)
                assert cached >= history_tokens[id(history)] // BLOCK * BLOCK
            history_tokens[id(history)] = usage.prompt_tokens
            history.append({"role": "assistant", "content": r.choices[0].message.content or ""})
            history.append({"role": "user", "content": f"And then what about {turn}?"})
    routed = [
        metric(dp_server, "replica_requests_routed_total", r) - routed_before[int(r)] for r in "01"
    ]
    assert sorted(routed) == [6, 6]  # four conversations on two replicas, two each
    hits = sum(metric(dp_server, "replica_prefix_cache_hits_total", r) for r in "01")
    assert hits > 0


history_tokens: dict[int, int] = {}


def _replica_pids(server: ServerProcess) -> list[int]:
    """The engine replicas: the server's children started by multiprocessing's spawn."""
    pids = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == server.proc.pid and b"spawn_main" in cmdline:
            pids.append(int(entry.name))
    return sorted(pids)


def test_a_killed_replica_fails_its_requests_and_comes_back(dp_server: ServerProcess) -> None:
    pids = _replica_pids(dp_server)
    assert len(pids) == 2
    victim = max(pids, key=lambda p: sorted(os.sched_getaffinity(p)))  # the last replica
    results: dict[int, str] = {}
    started = [threading.Event() for _ in range(8)]

    def stream(i: int) -> None:
        body = {
            "model": NAME,
            "messages": [{"role": "user", "content": f"user {i} asks about {i * 13}"}],
            "max_tokens": 440,
            "ignore_eos": True,
            "temperature": 0,
            "stream": True,
        }
        events: list[str] = []
        with httpx.stream(
            "POST", f"{dp_server.base_url}/v1/chat/completions", json=body, timeout=60
        ) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    events.append(line[6:])
                    started[i].set()
        assert events[-1] == "[DONE]"
        last = json.loads(events[-2])
        results[i] = "error" if "error" in last else last["choices"][0]["finish_reason"]
        if "error" in last:
            assert "replica" in last["error"]["message"]

    threads = [threading.Thread(target=stream, args=(i,), daemon=True) for i in range(8)]
    for t in threads:
        t.start()
    assert all(e.wait(60) for e in started)
    os.kill(victim, signal.SIGKILL)
    for t in threads:
        t.join(60)
    assert not any(t.is_alive() for t in threads), "a request hung"
    assert sorted(results) == list(range(8))
    assert set(results.values()) <= {"error", "length"}
    assert "error" in results.values() and "length" in results.values()
    # still serving on the other replica, while the dead one restarts
    ready = httpx.get(f"{dp_server.base_url}/ready", timeout=5)
    assert ready.status_code == 200
    r = client(dp_server).completions.create(model=NAME, prompt="still here", max_tokens=4)
    assert r.choices[0].finish_reason == "length"
    wait_all_replicas(dp_server, timeout=120)  # the killed replica comes back
    after = _replica_pids(dp_server)
    assert len(after) == 2 and victim not in after
    assert metric(dp_server, "replica_up", "1") == 1
    assert dp_server.proc.poll() is None


def _admin(server: ServerProcess) -> dict[str, Any]:
    r = httpx.get(f"{server.base_url}/admin/replicas", timeout=10)
    assert r.status_code == 200, r.text
    (model,) = r.json()["data"]
    assert model["model"] == NAME
    return dict(model)


def _pid(where: str) -> int:
    found = re.fullmatch(r"pid (\d+)", where)
    assert found is not None, where
    return int(found.group(1))


def test_a_rolling_restart_under_streaming_traffic_fails_no_request(
    dp_server: ServerProcess,
) -> None:
    wait_all_replicas(dp_server)
    before = _admin(dp_server)
    assert [r["state"] for r in before["replicas"]] == ["serving", "serving"]
    pids_before = [_pid(r["where"]) for r in before["replicas"]]
    crashes_before = [r["restarts"]["crash"] for r in before["replicas"]]
    url = f"{dp_server.base_url}/admin/replicas/restart"
    missing = httpx.post(url, json={"model": "no-such-model"}, timeout=10)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "model_not_found"
    assert httpx.post(url, json={"drain_timeout": -1}, timeout=10).status_code == 400
    assert httpx.post(url, json={"drain": 1}, timeout=10).status_code == 400
    assert _admin(dp_server)["rolling_restart"] == before["rolling_restart"]  # none started
    stop = threading.Event()
    finished: list[str] = []
    failures: list[BaseException] = []

    def user(u: int) -> None:
        oai = client(dp_server)
        i = 0
        while not stop.is_set():
            try:
                stream = oai.chat.completions.create(
                    model=NAME,
                    messages=[{"role": "user", "content": f"user {u} turn {i}"}],
                    max_tokens=48,
                    temperature=0,
                    stream=True,
                    extra_body={"ignore_eos": True},
                )
                reasons = [c.choices[0].finish_reason for c in stream if c.choices]
                finished.append(str(reasons[-1]))
            except Exception as exc:  # any failed request fails the test
                failures.append(exc)
            i += 1

    users = [threading.Thread(target=user, args=(u,), daemon=True) for u in range(3)]
    for t in users:
        t.start()
    time.sleep(0.5)
    started = httpx.post(url, timeout=10)
    assert started.status_code == 202, started.text
    plan = started.json()
    assert plan["model"] == NAME and plan["order"] == [0, 1] and plan["status"] == "running"
    again = httpx.post(url, json={"model": NAME}, timeout=10)
    assert again.status_code == 409, again.text
    assert "already running" in again.json()["error"]["message"]
    # Progress, sampled: never two replicas out, and each replica's pid changes once.
    pids_seen = [{pid} for pid in pids_before]
    states_seen: set[str] = set()
    deadline = time.monotonic() + 240
    while True:
        report = _admin(dp_server)
        states = [r["state"] for r in report["replicas"]]
        assert sum(s != "serving" for s in states) <= 1, states
        states_seen |= set(states)
        for i, r in enumerate(report["replicas"]):
            if r["state"] == "serving":
                pids_seen[i].add(_pid(r["where"]))
        if report["rolling_restart"]["status"] != "running":
            break
        assert time.monotonic() < deadline, report
        time.sleep(0.1)
    time.sleep(0.5)  # requests that start after the roll too
    stop.set()
    for t in users:
        t.join(60)
    assert report["rolling_restart"]["status"] == "done", report
    assert report["rolling_restart"]["restarted"] == [0, 1]
    assert not failures, failures[:3]
    assert len(finished) >= 6 and set(finished) == {"length"}
    assert "restarting" in states_seen  # draining may pass between two samples
    pids_after = [_pid(r["where"]) for r in report["replicas"]]
    for i in range(2):
        assert pids_seen[i] == {pids_before[i], pids_after[i]}
        assert pids_after[i] != pids_before[i]
    rolled = [r["restarts"]["rolling"] for r in before["replicas"]]
    assert [r["restarts"]["rolling"] for r in report["replicas"]] == [n + 1 for n in rolled]
    assert [r["restarts"]["crash"] for r in report["replicas"]] == crashes_before
    assert report["crash_restarts_left"] == before["crash_restarts_left"]
    assert [restarts_metric(dp_server, r, "rolling") for r in "01"] == [n + 1 for n in rolled]
    assert [restarts_metric(dp_server, r, "crash") for r in "01"] == crashes_before


def restarts_metric(server: ServerProcess, replica: str, reason: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    labels = f'model_name="{NAME}",reason="{reason}",replica="{replica}"'
    found = re.search(rf"^heron:replica_restarts_total\{{{labels}\}} (\S+)$", text, re.MULTILINE)
    assert found is not None, f"replica_restarts_total for {replica}/{reason} missing"
    return float(found.group(1))


def test_sighup_starts_a_rolling_restart(dp_server: ServerProcess) -> None:
    wait_all_replicas(dp_server)
    before = _admin(dp_server)
    last = before["rolling_restart"]
    dp_server.proc.send_signal(signal.SIGHUP)
    deadline = time.monotonic() + 240
    while (roll := _admin(dp_server)["rolling_restart"]) == last or roll["status"] == "running":
        assert time.monotonic() < deadline, roll
        assert dp_server.proc.poll() is None, "SIGHUP stopped the server"
        time.sleep(0.2)
    assert roll["status"] == "done", roll
    assert last is None or roll["started_at"] > last["started_at"], roll
    rolled = [r["restarts"]["rolling"] for r in _admin(dp_server)["replicas"]]
    assert rolled == [r["restarts"]["rolling"] + 1 for r in before["replicas"]]
    wait_all_replicas(dp_server)
    r = client(dp_server).completions.create(model=NAME, prompt="still here", max_tokens=4)
    assert r.choices[0].finish_reason == "length"
