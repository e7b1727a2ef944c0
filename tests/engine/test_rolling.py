"""Rolling restarts of ``DataParallelClient`` replicas over scripted engine cores (threads
speaking the real protocol on real pipes, tests/engine/test_dp_client.py): replicas restart
one at a time in slot order, never two out at once, every request during the roll
succeeds, a second roll is refused, one replica cannot roll, requests still running at the
drain timeout end with the replica's error, and none of it touches the crash budget; a roll
waits for a crash restart of its replica, restarts a replica that is down first, and stops,
starting nothing, when the client shuts down."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from heron.config import EngineConfig
from heron.engine.dp_client import MAX_RESTARTS, DataParallelClient
from heron.engine.protocol import EngineDeadError
from heron.engine.replica import ReplicaSlot
from heron.engine.replica_member import RestartBudget
from heron.engine.rolling import NothingToRollError, RollInProgressError, RollProgress
from heron.sampling_params import SamplingParams
from tests.engine.test_dp_client import Factory, ScriptedReplica, collect, start, wait_for
from tests.models.tiny import build


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build("llama3", tmp_path_factory.mktemp("rolling") / "hf"))


class WatchedFactory(Factory):
    """Also records, at every restart, the states of the other replicas then."""

    def __init__(self, script: dict[int, list[str]]) -> None:
        super().__init__(script)
        self.client: DataParallelClient | None = None
        self.others_at_restart: list[list[str]] = []

    def __call__(self, slot: ReplicaSlot) -> ScriptedReplica:
        if self.client is not None:
            states = [r.state for r in self.client.replicas() if r.index != slot.index]
            self.others_at_restart.append(states)
        return super().__call__(slot)


async def traffic_during_roll(
    client: DataParallelClient,
) -> tuple[RollProgress, list[object], int]:
    """Four users sending requests back to back; the rolling restart starts once each has
    finished one (so it cannot be over before traffic begins), and they stop when it is.
    Returns its progress, every result (token ids or the exception), and the most replicas
    seen out of rotation at once."""
    results: list[object] = []
    most_out = 0
    rolls: list[RollProgress] = []

    async def user(u: int) -> None:
        nonlocal most_out
        i = 0
        while not rolls or rolls[0].running:
            states = [r.state for r in client.replicas()]
            most_out = max(most_out, sum(s != "serving" for s in states))
            try:
                results.append(await collect(client, f"u{u}-{i}"))
            except Exception as exc:
                results.append(exc)
            i += 1

    users = asyncio.gather(*(user(u) for u in range(4)))
    while len(results) < 4:
        await asyncio.sleep(0.01)
    rolls.append(client.rolling_restart(drain_timeout_s=30))
    await users
    return rolls[0], results, most_out


def test_a_rolling_restart_takes_one_replica_at_a_time_and_fails_no_request(
    model_dir: str,
) -> None:
    factory = WatchedFactory({0: ["slow"], 1: ["slow"]})
    client = start(model_dir, factory)
    factory.client = client
    try:
        progress, results, most_out = asyncio.run(traffic_during_roll(client))
        assert progress.order == [0, 1]
        assert progress.phase == "done" and progress.done == [0, 1], progress
        assert factory.started == [0, 1, 0, 1]  # each replica restarted once, in slot order
        assert factory.others_at_restart == [["serving"], ["serving"]]
        assert most_out == 1  # draining or restarting, never two at once
        assert len(results) >= 8 and all(r == [65, 66] for r in results), results
        statuses = client.replicas()
        assert [r.restarts for r in statuses] == [{"crash": 0, "rolling": 1}] * 2
        assert client.crash_restarts_left == MAX_RESTARTS  # the crash budget is untouched
        wait_for(lambda: all(r.state == "serving" for r in client.replicas()))
        assert asyncio.run(collect(client, "after")) == [65, 66]
    finally:
        client.shutdown(timeout=1)


def test_a_second_roll_is_refused_while_one_runs_and_one_replica_cannot_roll(
    model_dir: str,
) -> None:
    factory = Factory({0: ["ok"], 1: ["ok"]})
    client = start(model_dir, factory)
    try:
        first = client.rolling_restart(drain_timeout_s=30)
        with pytest.raises(RollInProgressError, match="already running"):
            client.rolling_restart(drain_timeout_s=30)
        wait_for(lambda: not first.running)
        assert first.phase == "done" and factory.started == [0, 1, 0, 1]
        assert client.last_roll is first
        second = client.rolling_restart(drain_timeout_s=30)  # the first one is over
        wait_for(lambda: not second.running)
        assert second.phase == "done" and factory.started == [0, 1, 0, 1, 0, 1]
        assert [r.restarts["rolling"] for r in client.replicas()] == [2, 2]
    finally:
        client.shutdown(timeout=1)
    single = DataParallelClient(model_dir, EngineConfig(), 1, factory=Factory({0: ["ok"]}))
    try:
        with pytest.raises(NothingToRollError, match="nothing to serve"):
            single.rolling_restart(drain_timeout_s=30)
    finally:
        single.shutdown(timeout=1)


def test_a_draining_replica_gets_requests_only_when_no_other_serves(model_dir: str) -> None:
    client = start(model_dir, Factory({0: ["ok"], 1: ["ok"]}))
    try:
        client.set_draining(0, True)
        for i in range(4):
            assert asyncio.run(collect(client, f"a{i}")) == [65, 66]
        assert [r.routed for r in client.replicas()] == [0, 4]
        assert [r.state for r in client.replicas()] == ["draining", "serving"]
        client.set_draining(1, True)  # both draining: better served than refused
        assert asyncio.run(collect(client, "b")) == [65, 66]
    finally:
        client.shutdown(timeout=1)


def test_a_request_still_running_at_the_drain_timeout_ends_with_the_replica_error(
    model_dir: str,
) -> None:
    factory = Factory({0: ["stream-then-hang", "ok"], 1: ["ok"]})
    client = start(model_dir, factory)

    async def scenario() -> list[int]:
        params = SamplingParams(max_tokens=2, temperature=0.0)
        stuck = client.generate([1, 2, 3], params, request_id="stuck")  # idle tie: replica 0
        first = await anext(stuck)
        started = time.monotonic()  # before the roll's thread can start its drain clock
        progress = client.rolling_restart(drain_timeout_s=0.3)
        with pytest.raises(EngineDeadError, match="engine replica 0 exited"):
            async for _ in stuck:
                pass
        assert 0.3 <= time.monotonic() - started < 10
        others = [await collect(client, f"o{i}") for i in range(3)]  # on replica 1 meanwhile
        while progress.running:
            await asyncio.sleep(0.02)
        assert progress.phase == "done", progress
        return first.token_ids + [t for o in others for t in o]

    try:
        assert asyncio.run(scenario()) == [65] + [65, 66] * 3
        assert factory.started == [0, 1, 0, 1]
        assert client.crash_restarts_left == MAX_RESTARTS
        assert [r.restarts for r in client.replicas()] == [{"crash": 0, "rolling": 1}] * 2
    finally:
        client.shutdown(timeout=1)


class GatedFactory(Factory):
    """Holds the second start of slot 0 (its crash restart) until ``gate`` is set."""

    def __init__(self, script: dict[int, list[str]]) -> None:
        super().__init__(script)
        self.gate = threading.Event()

    def __call__(self, slot: ReplicaSlot) -> ScriptedReplica:
        if slot.index == 0 and self.started.count(0) == 1:
            self.started.append(slot.index)
            assert self.gate.wait(30)
            self.started.pop()
        return super().__call__(slot)


def test_a_roll_waits_for_a_crash_restart_of_its_replica_instead_of_racing_it(
    model_dir: str,
) -> None:
    factory = GatedFactory({0: ["die", "ok"], 1: ["ok"]})
    client = start(model_dir, factory)
    try:
        assert asyncio.run(collect(client, "a")) == [65, 66]  # replica 0 died: retried on 1
        wait_for(lambda: factory.started == [0, 1, 0])  # its crash restart, held at the gate
        progress = client.rolling_restart(drain_timeout_s=30)
        wait_for(lambda: progress.current == 0 and progress.phase == "restarting")
        time.sleep(0.3)
        assert factory.started == [0, 1, 0], "the roll replaced replica 0 during its restart"
        factory.gate.set()
        wait_for(lambda: not progress.running)
        assert progress.phase == "done", progress
        assert factory.started == [0, 1, 0, 0, 1]  # crash restart, then one roll step each
        assert [r.restarts for r in client.replicas()] == [
            {"crash": 1, "rolling": 1},
            {"crash": 0, "rolling": 1},
        ]
        assert asyncio.run(collect(client, "after")) == [65, 66]
    finally:
        factory.gate.set()
        client.shutdown(timeout=1)


def test_shutdown_stops_a_roll_and_starts_no_replica(model_dir: str) -> None:
    factory = Factory({0: ["stream-then-hang"], 1: ["ok"]})
    client = start(model_dir, factory)

    async def scenario() -> None:
        params = SamplingParams(max_tokens=2, temperature=0.0)
        stuck = client.generate([1, 2, 3], params, request_id="stuck")  # idle tie: replica 0
        await anext(stuck)
        progress = client.rolling_restart(drain_timeout_s=60)
        while progress.phase != "draining":
            await asyncio.sleep(0.02)
        await asyncio.to_thread(client.shutdown, 1)
        assert progress.phase == "failed" and progress.finished_at is not None, progress
        assert progress.error is not None and "shutting down" in progress.error
        with pytest.raises(EngineDeadError):
            async for _ in stuck:
                pass

    try:
        asyncio.run(scenario())
        assert factory.started == [0, 1]  # the drained replica was not replaced
    finally:
        client.shutdown(timeout=1)


def test_a_replica_down_for_good_is_restarted_first_and_the_roll_completes(
    model_dir: str,
) -> None:
    factory = Factory({0: ["ok"], 1: ["die", "ok"]})
    client = start(model_dir, factory)
    try:
        client._budget = RestartBudget(0, 300.0)  # no crash restart: replica 1 stays down
        client.set_draining(0, True)  # so the request goes to replica 1, which dies on it
        assert asyncio.run(collect(client, "a")) == [65, 66]  # retried on replica 0
        client.set_draining(0, False)
        wait_for(lambda: [r.state for r in client.replicas()] == ["serving", "down"])
        progress = client.rolling_restart(drain_timeout_s=30)
        assert progress.order == [1, 0]
        wait_for(lambda: not progress.running)  # not stuck waiting for replica 1 to serve
        assert progress.phase == "done" and progress.done == [1, 0], progress
        assert factory.started == [0, 1, 1, 0]
        assert [r.state for r in client.replicas()] == ["serving", "serving"]
    finally:
        client.shutdown(timeout=1)


class HeldFactory(WatchedFactory):
    """Holds the second start of slot 1 (its crash restart) until ``gate`` is set."""

    def __init__(self, script: dict[int, list[str]]) -> None:
        super().__init__(script)
        self.gate = threading.Event()

    def __call__(self, slot: ReplicaSlot) -> ScriptedReplica:
        if slot.index == 1 and self.started.count(1) == 1:
            assert self.gate.wait(30)
        return super().__call__(slot)


def test_a_replica_that_crashes_during_a_drain_sends_the_roll_back_to_waiting(
    model_dir: str,
) -> None:
    factory = HeldFactory({0: ["stream-then-hang", "ok"], 1: ["ok"]})
    client = start(model_dir, factory)
    factory.client = client

    async def scenario() -> None:
        params = SamplingParams(max_tokens=2, temperature=0.0)
        stuck = client.generate([1, 2, 3], params, request_id="stuck")  # idle tie: replica 0
        await anext(stuck)
        progress = client.rolling_restart(drain_timeout_s=0.5)
        while progress.phase != "draining":
            await asyncio.sleep(0.02)
        client._members[1].replica.kill()  # replica 1 crashes; its restart is held
        await asyncio.sleep(1.0)  # past the drain timeout: replica 0 must not restart yet
        assert factory.started == [0, 1], "replica 0 restarted while replica 1 was out"
        assert progress.current == 0 and progress.phase in ("waiting", "draining"), progress
        factory.gate.set()
        with pytest.raises(EngineDeadError):  # drained again, then restarted
            async for _ in stuck:
                pass
        while progress.running:
            await asyncio.sleep(0.02)
        assert progress.phase == "done", progress

    try:
        asyncio.run(scenario())
        assert factory.started == [0, 1, 1, 0, 1]  # crash restart of 1, then the roll
        assert factory.others_at_restart[1] == ["serving"]  # replica 1 when 0 restarted
    finally:
        factory.gate.set()
        client.shutdown(timeout=1)
