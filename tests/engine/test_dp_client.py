"""``DataParallelClient`` over scripted engine cores (threads speaking the real protocol on
real pipes, through the replica factory a Ray launcher would pass): a replica that dies
before streaming is retried on another, one that dies after streaming fails the request
with a clear error, and a dead replica is restarted through its factory."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import threading
import time
from dataclasses import dataclass, field
from multiprocessing import Pipe
from multiprocessing.connection import Connection

import pytest

from heron.config import EngineConfig
from heron.engine.dp_client import DataParallelClient
from heron.engine.protocol import (
    EngineCoreOutput,
    EngineCoreOutputs,
    EngineCoreRequest,
    EngineDeadError,
    EngineStats,
    LoadModel,
    Ready,
    Shutdown,
    decode_to_core,
    encode,
)
from heron.engine.replica import CoreChannel, ReplicaSlot
from heron.sampling_params import SamplingParams
from tests.models.tiny import build


@dataclass
class ScriptedReplica:
    """A core on a thread: "ok" answers every request with two tokens; "slow" streams them
    0.1 s apart; "die" closes its pipe on the first request; "stream-then-die" sends one
    token, then closes; "stream-then-hang" sends one token and nothing more until Shutdown."""

    behaviour: str
    pipe: Connection = field(init=False)
    _core: Connection = field(init=False)
    _thread: threading.Thread = field(init=False)

    def __post_init__(self) -> None:
        self.pipe, self._core = Pipe()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def conn(self) -> CoreChannel:
        return self.pipe

    def _serve(self) -> None:
        core = self._core
        try:
            while True:
                msg = decode_to_core(core.recv_bytes())
                if isinstance(msg, Shutdown):
                    break
                if isinstance(msg, LoadModel):
                    core.send_bytes(encode(Ready(64)))
                elif isinstance(msg, EngineCoreRequest):
                    rid = msg.request_id
                    if self.behaviour == "die":
                        break
                    if self.behaviour.startswith("stream-then-"):
                        core.send_bytes(encode(EngineCoreOutputs([EngineCoreOutput(rid, [65])])))
                        if self.behaviour == "stream-then-die":
                            time.sleep(0.2)
                            break
                        while not isinstance(decode_to_core(core.recv_bytes()), Shutdown):
                            pass
                        break
                    if self.behaviour == "slow":
                        core.send_bytes(encode(EngineCoreOutputs([EngineCoreOutput(rid, [65])])))
                        time.sleep(0.1)
                        out = EngineCoreOutput(rid, [66], finish_reason="length")
                        core.send_bytes(encode(EngineCoreOutputs([out], EngineStats())))
                        continue
                    out = EngineCoreOutput(rid, [65, 66], finish_reason="length")
                    core.send_bytes(encode(EngineCoreOutputs([out], EngineStats())))
        except (EOFError, OSError):
            pass
        core.close()

    def is_alive(self) -> bool:
        return self._thread.is_alive()

    def kill(self) -> None:
        """Shut the core's end down: the client reads EOF, and ``_serve``, blocked reading,
        wakes and closes it (closing the descriptor alone wakes neither)."""
        with contextlib.suppress(OSError), socket.socket(fileno=os.dup(self._core.fileno())) as s:
            s.shutdown(socket.SHUT_RDWR)

    def join(self, timeout: float | None = None) -> None:
        self._thread.join(timeout)

    def describe(self) -> str:
        return f"scripted {self.behaviour}"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> str:
    return str(build("llama3", tmp_path_factory.mktemp("dp-client") / "hf"))


class Factory:
    """Replica behaviours per slot, in start order; records every start (restarts too)."""

    def __init__(self, script: dict[int, list[str]]) -> None:
        self.script = script
        self.started: list[int] = []

    def __call__(self, slot: ReplicaSlot) -> ScriptedReplica:
        self.started.append(slot.index)
        behaviours = self.script[slot.index]
        return ScriptedReplica(behaviours.pop(0) if len(behaviours) > 1 else behaviours[0])


def start(model_dir: str, factory: Factory) -> DataParallelClient:
    client = DataParallelClient(model_dir, EngineConfig(), 2, factory=factory)
    assert client.wait_ready(30)
    return client


async def collect(client: DataParallelClient, rid: str) -> list[int]:
    params = SamplingParams(max_tokens=2, temperature=0.0)
    tokens: list[int] = []
    async for delta in client.generate([1, 2, 3], params, request_id=rid):
        tokens += delta.token_ids
    return tokens


def wait_for(condition: object, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_a_replica_that_dies_before_streaming_is_retried_elsewhere(model_dir: str) -> None:
    factory = Factory({0: ["die", "ok"], 1: ["ok"]})
    client = start(model_dir, factory)
    try:
        # idle replicas tie: the first request goes to replica 0, which dies on it
        assert asyncio.run(collect(client, "a")) == [65, 66]
        assert [r.routed for r in client.replicas()] == [1, 1]
        # replica 0 restarts through the factory and serves again
        wait_for(lambda: factory.started == [0, 1, 0] and all(r.up for r in client.replicas()))
        assert asyncio.run(collect(client, "b")) == [65, 66]
    finally:
        client.shutdown(timeout=1)


def test_a_replica_that_dies_after_streaming_fails_the_request(model_dir: str) -> None:
    factory = Factory({0: ["stream-then-die", "ok"], 1: ["ok"]})
    client = start(model_dir, factory)
    try:
        with pytest.raises(EngineDeadError, match="engine replica 0 exited"):
            asyncio.run(collect(client, "a"))
        # new requests keep flowing on replica 1 while replica 0 restarts
        assert asyncio.run(collect(client, "b")) == [65, 66]
        wait_for(lambda: all(r.up for r in client.replicas()))
        assert factory.started == [0, 1, 0]
    finally:
        client.shutdown(timeout=1)
