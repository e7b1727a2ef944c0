"""The replica listener without Ray: only a client with the key and a valid hello gets in;
a silent connection neither blocks the others nor stays open; a ``RemoteReplica`` waits for
its actor's connection, reads EOF when the actor goes, and ``kill`` ends it either way. And
the model check that each node runs before serving."""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Iterator
from multiprocessing import AuthenticationError
from multiprocessing.connection import Client, Connection
from pathlib import Path

import msgspec
import pytest

from heron.ray import listener as listener_module
from heron.ray.actor import model_files, model_mismatch
from heron.ray.listener import ReplicaHello, ReplicaListener, connection_closed
from heron.ray.remote import RemoteReplica


@pytest.fixture
def listener() -> Iterator[ReplicaListener]:
    server = ReplicaListener("127.0.0.1", 0, size=2)
    yield server
    server.close()


def dial(server: ReplicaListener, index: int, authkey: bytes | None = None) -> Connection:
    conn = Client(server.address, family="AF_INET", authkey=authkey or server.authkey)
    conn.send_bytes(msgspec.msgpack.encode(ReplicaHello(index, "127.0.0.1", os.getpid())))
    return conn


def test_an_authenticated_replica_is_handed_out_by_its_index(listener: ReplicaListener) -> None:
    conn = dial(listener, 1)
    arrival = listener.take(1, threading.Event())
    assert arrival.hello.replica_index == 1
    arrival.conn.send_bytes(b"ping")
    assert conn.recv_bytes() == b"ping"
    conn.close()


def test_a_wrong_key_is_refused(listener: ReplicaListener) -> None:
    with pytest.raises((AuthenticationError, EOFError, ConnectionError)):
        dial(listener, 0, authkey=b"x" * 32)
    cancel = threading.Event()
    threading.Timer(0.5, cancel.set).start()
    with pytest.raises(EOFError):
        listener.take(0, cancel)  # nothing was queued


def test_an_out_of_range_hello_is_refused(listener: ReplicaListener) -> None:
    conn = dial(listener, 7)
    with pytest.raises((EOFError, ConnectionError)):
        conn.recv_bytes()  # closed by the listener


def test_a_silent_connection_does_not_block_others(
    listener: ReplicaListener, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(listener_module, "HANDSHAKE_TIMEOUT_S", 1)
    silent = socket.create_connection(listener.address)
    conn = dial(listener, 0)  # authenticated while the silent one waits
    assert listener.take(0, threading.Event()).hello.replica_index == 0
    silent.settimeout(5)
    # The challenge arrives, then the connection is dropped at the deadline.
    received = b""
    while chunk := silent.recv(4096):
        received += chunk
    assert received  # the challenge, and then EOF
    silent.close()
    conn.close()


def test_a_remote_replica_waits_for_its_actor_and_sees_it_go(listener: ReplicaListener) -> None:
    replica = RemoteReplica(listener, 0)
    assert replica.is_alive()  # waiting for the actor is not dead
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append(replica.conn.recv_bytes()))
    reader.start()
    time.sleep(0.2)
    actor = dial(listener, 0)
    actor.send_bytes(b"ready")
    reader.join(5)
    assert got == [b"ready"]
    assert replica.is_alive() and "pid" in replica.describe()
    actor.close()  # the actor's process died
    replica.join(5)
    assert not replica.is_alive()


def test_kill_ends_a_replica_waiting_or_connected(listener: ReplicaListener) -> None:
    waiting = RemoteReplica(listener, 1)
    errors: list[BaseException] = []

    def read() -> None:
        try:
            waiting.conn.recv_bytes()
        except EOFError as exc:
            errors.append(exc)

    reader = threading.Thread(target=read)
    reader.start()
    time.sleep(0.2)
    waiting.kill()
    reader.join(5)
    assert not reader.is_alive() and errors and not waiting.is_alive()

    connected = RemoteReplica(listener, 0)
    actor = dial(listener, 0)
    connected.conn.send_bytes(b"load")
    assert actor.recv_bytes() == b"load"
    connected.kill()
    with pytest.raises(EOFError):
        actor.recv_bytes()  # the engine reads EOF and leaves its loop
    assert not connected.is_alive()
    actor.close()


def test_a_connection_that_left_before_it_was_taken_is_skipped(
    listener: ReplicaListener,
) -> None:
    gone = dial(listener, 0)
    time.sleep(0.3)
    gone.close()
    live = dial(listener, 0)
    arrival = listener.take(0, threading.Event())
    assert not connection_closed(arrival.conn)
    live.send_bytes(b"x")
    assert arrival.conn.recv_bytes() == b"x"
    live.close()


def test_model_check_names_what_is_missing_or_different(tmp_path: Path) -> None:
    model = tmp_path / "hf"
    (model / "sub").mkdir(parents=True)
    (model / "config.json").write_text("{}")
    (model / "sub" / "weights.bin").write_bytes(b"0" * 10)
    expected = model_files(str(model))
    assert expected == {"config.json": 2, os.path.join("sub", "weights.bin"): 10}
    assert model_mismatch(str(model), expected) is None
    (model / "sub" / "weights.bin").write_bytes(b"0" * 9)
    assert "has 9 bytes here but 10" in (model_mismatch(str(model), expected) or "")
    (model / "config.json").unlink()
    assert "config.json is missing" in (model_mismatch(str(model), expected) or "")
    gguf = tmp_path / "model.gguf"
    assert "cannot read" in (model_mismatch(str(gguf), {"": 5}) or "")
