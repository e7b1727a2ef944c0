"""``heron serve --data-parallel-size 2`` on a tiny random llama, with the official client:
greedy output equals one engine's, multi-turn conversations return to the replica holding
their history (``cached_tokens``), per-replica metrics, and a replica killed mid-run: no
hang, its requests end with a clear error, the rest succeed, it comes back."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

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
        # one engine: no replica series at all
        assert "heron:replica_up{" not in httpx.get(f"{single.base_url}/metrics").text


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
