"""Blob writes: verified, atomic, single writer per digest, and stale partials cleaned up."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from heron.store import ModelStore
from heron.store.blobs import BlobStore
from heron.store.files import DigestError, DigestMismatchError, SizeMismatchError, parse_digest

DATA = b"heron blob content " * 1000


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def partials(blobs: BlobStore) -> list[str]:
    return sorted(os.listdir(blobs.partial_dir))


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs")


def test_parse_digest_accepts_only_sha256_lower_hex() -> None:
    good = digest_of(b"x")
    assert parse_digest(good) == good


@pytest.mark.parametrize(
    "text",
    [
        "sha256:../../x",
        "sha256:../../../../etc/passwd",
        "sha256:" + "A" * 64,
        "SHA256:" + "a" * 64,
        "sha256:" + "a" * 63,
        "sha256:" + "a" * 65,
        "sha256:" + "a" * 64 + "\n",
        "sha256-" + "a" * 64,
        "sha512:" + "a" * 64,
        "sha256:" + "g" * 64,
        "",
        "sha256:",
    ],
)
def test_bad_digests_are_refused(blobs: BlobStore, text: str) -> None:
    with pytest.raises(DigestError):
        parse_digest(text)
    with pytest.raises(DigestError):
        blobs.path(text)
    with pytest.raises(DigestError):
        blobs.writer(expected=text)


def test_write_commit_places_a_read_only_blob(blobs: BlobStore) -> None:
    d = digest_of(DATA)
    with blobs.writer(expected=d, size=len(DATA)) as w:
        assert not w.done and w.offset == 0
        for i in range(0, len(DATA), 4096):
            w.write(DATA[i : i + 4096])
        assert w.commit() == d
    path = blobs.path(d)
    assert path.read_bytes() == DATA
    assert stat.S_IMODE(path.stat().st_mode) == 0o444
    assert blobs.has(d) and blobs.size(d) == len(DATA) and blobs.verify(d)
    assert partials(blobs) == []
    assert blobs.digests() == [d]


def test_writer_without_expected_digest(blobs: BlobStore) -> None:
    with blobs.writer() as w:
        w.write(DATA)
        assert w.commit() == digest_of(DATA)
    assert blobs.has(digest_of(DATA)) and partials(blobs) == []


def test_digest_mismatch_stores_nothing(blobs: BlobStore) -> None:
    wrong = digest_of(b"something else")
    with pytest.raises(DigestMismatchError), blobs.writer(expected=wrong) as w:
        w.write(DATA)
        w.commit()
    assert not blobs.has(wrong) and blobs.digests() == []
    assert partials(blobs) == []


def test_size_overrun_is_refused_as_bytes_arrive(blobs: BlobStore) -> None:
    d = digest_of(DATA)
    with pytest.raises(SizeMismatchError), blobs.writer(expected=d, size=10) as w:
        w.write(DATA[:8])
        w.write(DATA[8:16])  # passes the declared 10 bytes
    assert blobs.digests() == [] and partials(blobs) == []


def test_short_content_is_refused_at_commit(blobs: BlobStore) -> None:
    d = digest_of(DATA)
    with pytest.raises(SizeMismatchError), blobs.writer(expected=d, size=len(DATA)) as w:
        w.write(DATA[:100])
        w.commit()
    assert blobs.digests() == [] and partials(blobs) == []


def test_exception_without_resume_deletes_the_partial(blobs: BlobStore) -> None:
    with pytest.raises(ConnectionError), blobs.writer(expected=digest_of(DATA)) as w:
        w.write(DATA[:100])
        raise ConnectionError("network went away")
    assert partials(blobs) == []


def test_leaving_without_commit_deletes_the_partial(blobs: BlobStore) -> None:
    with blobs.writer(expected=digest_of(DATA)) as w:
        w.write(DATA[:100])
    assert partials(blobs) == [] and blobs.digests() == []


def test_resume_keeps_and_rehashes_the_partial(blobs: BlobStore) -> None:
    d, half = digest_of(DATA), len(DATA) // 2
    with pytest.raises(ConnectionError), blobs.writer(d, len(DATA), resume=True) as w:
        w.write(DATA[:half])
        raise ConnectionError("network went away")
    assert partials(blobs) == ["sha256-" + d[7:]]  # kept, lock released
    with blobs.writer(d, len(DATA), resume=True) as w:
        assert w.offset == half
        w.write(DATA[half:])
        assert w.commit() == d
    assert blobs.path(d).read_bytes() == DATA and partials(blobs) == []


def test_resume_restarts_a_partial_longer_than_declared(blobs: BlobStore) -> None:
    d = digest_of(DATA[:10])
    with pytest.raises(ConnectionError), blobs.writer(d, resume=True) as w:
        w.write(DATA[:50])
        raise ConnectionError
    with blobs.writer(d, 10, resume=True) as w:
        assert w.offset == 0
        w.write(DATA[:10])
        w.commit()
    assert blobs.verify(d)


def test_resume_does_not_keep_a_mismatch(blobs: BlobStore) -> None:
    d = digest_of(DATA)
    with pytest.raises(DigestMismatchError), blobs.writer(d, resume=True) as w:
        w.write(b"wrong")
        w.commit()
    assert partials(blobs) == []


def test_existing_blob_means_done(blobs: BlobStore) -> None:
    d = digest_of(DATA)
    with blobs.writer(d) as w:
        w.write(DATA)
        w.commit()
    with blobs.writer(d, size=len(DATA)) as w:
        assert w.done
        assert w.commit() == d
    assert partials(blobs) == []


def test_concurrent_writers_of_one_digest_threads(blobs: BlobStore) -> None:
    d = digest_of(DATA)
    first_has_lock, release_first = threading.Event(), threading.Event()
    second_done: list[bool] = []
    order: list[str] = []

    def first() -> None:
        with blobs.writer(d, len(DATA)) as w:
            first_has_lock.set()
            w.write(DATA[:100])
            release_first.wait(10)
            w.write(DATA[100:])
            w.commit()
            order.append("first committed")

    def second() -> None:
        with blobs.writer(d, len(DATA)) as w:
            order.append("second got lock")
            second_done.append(w.done)
            if not w.done:
                w.write(DATA)
                w.commit()

    t1 = threading.Thread(target=first)
    t1.start()
    assert first_has_lock.wait(10)
    t2 = threading.Thread(target=second)
    t2.start()
    time.sleep(0.3)
    assert order == []  # the second writer is blocked on the lock
    release_first.set()
    t1.join(10)
    t2.join(10)
    # commit() releases the lock before the first thread can note it, so the two notes may
    # land in either order; that the second found the blob already stored (done) is what
    # shows it waited for the first's commit.
    assert sorted(order) == ["first committed", "second got lock"]
    assert second_done == [True]
    assert blobs.verify(d) and partials(blobs) == []


HOLDER = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    from heron.store.blobs import BlobStore
    blobs = BlobStore(Path(sys.argv[1]))
    data = bytes.fromhex(sys.argv[3])
    w = blobs.writer(sys.argv[2], len(data))
    w.write(data[:5])
    print("locked", flush=True)
    if sys.stdin.readline().strip() == "commit":
        w.write(data[5:])
        w.commit()
        print("committed", flush=True)
    """
)


def _holder(blobs: BlobStore, data: bytes) -> subprocess.Popen[str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(blobs.root), digest_of(data), data.hex()],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert proc.stdout is not None
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_concurrent_writers_of_one_digest_processes(blobs: BlobStore) -> None:
    data = DATA[:64]
    d = digest_of(data)
    proc = _holder(blobs, data)
    assert blobs.cleanup_partials() == 0  # a live writer's partial is left alone
    result: list[bool] = []
    t = threading.Thread(target=lambda: result.append(blobs.writer(d, len(data)).done))
    t.start()
    time.sleep(0.3)
    assert t.is_alive()  # blocked behind the other process
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write("commit\n")
    proc.stdin.flush()
    assert proc.stdout.readline().strip() == "committed"
    t.join(10)
    assert proc.wait(10) == 0
    assert result == [True] and blobs.verify(d) and partials(blobs) == []


def test_partials_of_a_killed_writer_are_cleaned_up_at_start(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    proc = _holder(store.blobs, DATA[:64])
    assert len(partials(store.blobs)) == 2  # the partial and its lock file
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(10)
    assert len(partials(store.blobs)) == 2  # kill -9 left them behind
    ModelStore(tmp_path / "models")  # a restart
    assert partials(store.blobs) == []
    assert store.blobs.digests() == []


def test_tamper_is_detected_by_verify(blobs: BlobStore) -> None:
    d = digest_of(DATA)
    with blobs.writer(d) as w:
        w.write(DATA)
        w.commit()
    path = blobs.path(d)
    path.chmod(0o644)
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x01
    path.write_bytes(bytes(raw))
    assert not blobs.verify(d)
    blobs.remove(d)
    assert not blobs.has(d) and not blobs.verify(d)


def test_import_file_hardlinks(blobs: BlobStore, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(DATA)
    d = blobs.import_file(src, expected=digest_of(DATA))
    assert d == digest_of(DATA)
    assert blobs.path(d).stat().st_ino == src.stat().st_ino  # same filesystem: no copy
    assert stat.S_IMODE(blobs.path(d).stat().st_mode) == 0o444
    assert blobs.place_file(src, expected=d) == (d, False)
    assert partials(blobs) == []


def test_import_file_without_link_copies(blobs: BlobStore, tmp_path: Path) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(DATA)
    d, created = blobs.place_file(src, link=False)
    assert created and d == digest_of(DATA)
    assert blobs.path(d).stat().st_ino != src.stat().st_ino
    assert blobs.verify(d) and stat.S_IMODE(src.stat().st_mode) == 0o644


@pytest.mark.parametrize("link", [True, False])
def test_import_file_mismatch_stores_nothing(blobs: BlobStore, tmp_path: Path, link: bool) -> None:
    src = tmp_path / "src.bin"
    src.write_bytes(DATA)
    with pytest.raises(DigestMismatchError):
        blobs.import_file(src, expected=digest_of(b"other"), link=link)
    assert blobs.digests() == [] and partials(blobs) == []


def test_import_file_refuses_non_regular_files(blobs: BlobStore, tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        blobs.import_file(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError):
        blobs.import_file(fifo)
    assert blobs.digests() == [] and partials(blobs) == []


def test_disk_full_removes_the_partial_even_with_resume(
    blobs: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    import heron.store.files as files_module

    def full(fd: int, data: object) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    d = digest_of(DATA)
    with pytest.raises(OSError, match="No space"), blobs.writer(d, resume=True) as w:
        monkeypatch.setattr(files_module.os, "write", full)
        w.write(DATA)
    monkeypatch.undo()
    assert partials(blobs) == [] and blobs.digests() == []


def test_writer_without_wait_refuses_a_held_digest_at_once(blobs: BlobStore) -> None:
    from heron.store.blobs import BlobBusyError

    d = digest_of(DATA)
    with blobs.writer(d, len(DATA)) as first:
        start = time.monotonic()
        with pytest.raises(BlobBusyError, match="another writer"):
            blobs.writer(d, len(DATA), wait=False)
        assert time.monotonic() - start < 1
        first.write(DATA)
        first.commit()
    with blobs.writer(d, len(DATA), wait=False) as again:
        assert again.done


def _flip(path: Path, offset: int) -> None:
    path.chmod(0o644)
    with path.open("r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def test_check_trusts_the_stamp_and_rehashes_when_the_file_changed(
    blobs: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    import heron.store.blobs as blobs_module

    d = digest_of(DATA)
    with blobs.writer(d, len(DATA)) as w:
        w.write(DATA)
        w.commit()
    hashed: list[int] = []
    real_hash = blobs_module.hash_fd

    def counting_hash(fd: int) -> tuple[Any, int]:
        hashed.append(fd)
        return real_hash(fd)

    monkeypatch.setattr(blobs_module, "hash_fd", counting_hash)
    assert blobs.check(d) and hashed == []  # stamped at commit: no re-hash
    _flip(blobs.path(d), len(DATA) // 2)  # same size, new mtime
    assert not blobs.check(d) and len(hashed) == 1
    _flip(blobs.path(d), len(DATA) // 2)  # restored: re-hashed, good, stamped again
    assert blobs.check(d) and len(hashed) == 2
    assert blobs.check(d) and len(hashed) == 2
