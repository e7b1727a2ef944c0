"""Content-addressed blobs: ``<root>/sha256-<hex>``, written only through a verifying writer.

A digest is parsed (``files.parse_digest``) before it names a file. Bytes never land under
their final name until they have been hashed and counted::

    writer(expected, size)                      <root>/.partial/sha256-<hex>        (bytes arrive,
      flock <root>/.partial/sha256-<hex>.lock                                        hashed, counted)
    commit(): fsync, size == declared, digest == expected,
              chmod 0444, rename -> <root>/sha256-<hex>, fsync <root>

A mismatch deletes the partial file and stores nothing. Each verified blob gets a stamp,
``<root>/.stamps/sha256-<hex>``: its size, mtime_ns, inode and device when it was last hashed.
``check()`` trusts a blob whose stamp still matches and re-hashes one whose file changed (a
byte flipped in place, a file replaced), so a loader never maps bytes that no longer match. One writer per digest: the lock file is
held with ``fcntl.flock`` for the writer's whole life, so a second writer of the same digest
blocks, then finds the blob present (``done``). A partial whose lock nobody holds belongs to a
dead process (``kill -9`` mid-pull) and ``cleanup_partials()`` removes it.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
import uuid
from pathlib import Path

from heron.store.blob_writer import BlobBusyError, BlobWriter
from heron.store.files import (
    DIGEST_RE,
    DigestMismatchError,
    copy_into,
    fsync_dir,
    hash_fd,
    lock,
    parse_digest,
    unlock,
)

__all__ = ["BlobBusyError", "BlobStore", "BlobWriter"]

logger = logging.getLogger(__name__)

PARTIAL_DIR = ".partial"
STAMP_DIR = ".stamps"
# A blob just written or imported is not referenced by any manifest until the caller writes one;
# gc() leaves such blobs alone for this long (or until the manifest is written).
PIN_SECONDS = 3600.0

# Pins live per blob directory and per process, so two BlobStore objects over one root agree.
_pins: dict[str, dict[str, float]] = {}
_pins_lock = threading.Lock()


class BlobStore:
    """The blob directory of a model store (``<models>/blobs``)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.partial_dir = self.root / PARTIAL_DIR
        self.partial_dir.mkdir(parents=True, exist_ok=True)
        self.stamp_dir = self.root / STAMP_DIR

    def path(self, digest: str) -> Path:
        """``<root>/sha256-<hex>`` for a validated digest (the file may not exist)."""
        return self.root / ("sha256-" + parse_digest(digest)[7:])

    def has(self, digest: str) -> bool:
        try:
            return stat.S_ISREG(os.lstat(self.path(digest)).st_mode)
        except FileNotFoundError:
            return False

    def size(self, digest: str) -> int:
        """Size in bytes of a stored blob; FileNotFoundError if absent."""
        return os.lstat(self.path(digest)).st_size

    def verify(self, digest: str) -> bool:
        """Re-hash the stored file: False if it is missing or its content no longer matches."""
        try:
            fd = os.open(self.path(digest), os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            return False
        try:
            before = os.fstat(fd)
            hasher, _ = hash_fd(fd)
        finally:
            os.close(fd)
        good = "sha256:" + hasher.hexdigest() == digest
        if good:
            self._write_stamp(digest, before)
        else:
            self._stamp_path(digest).unlink(missing_ok=True)
        return good

    def check(self, digest: str) -> bool:
        """Whether the stored blob still holds its digest's bytes: True at once if the file is
        unchanged since it was last verified (its stamp matches), else it is re-hashed
        (``verify``). False if it is missing or corrupted."""
        try:
            st = os.lstat(self.path(digest))
            recorded = self._stamp_path(digest).read_text()
        except (OSError, UnicodeDecodeError):
            return self.verify(digest)
        return recorded == _stamp_text(st) or self.verify(digest)

    def _stamp_path(self, digest: str) -> Path:
        return self.stamp_dir / ("sha256-" + parse_digest(digest)[7:])

    def _write_stamp(self, digest: str, st: os.stat_result) -> None:
        """Record ``st`` (the stat of the bytes just verified) as the blob's stamp. Best effort:
        without a stamp the next ``check`` re-hashes."""
        path = self._stamp_path(digest)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}")
        try:
            self.stamp_dir.mkdir(exist_ok=True)
            tmp.write_text(_stamp_text(st))
            os.replace(tmp, path)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            logger.warning("cannot stamp blob %s: %s", digest, exc)

    def _stamp_final(self, digest: str) -> None:
        try:
            self._write_stamp(digest, os.lstat(self.path(digest)))
        except OSError:
            pass

    def remove(self, digest: str) -> None:
        self.path(digest).unlink(missing_ok=True)
        self._stamp_path(digest).unlink(missing_ok=True)
        self.unpin([digest])

    def digests(self) -> list[str]:
        """Digests of every stored blob (files named ``sha256-<hex>``), sorted."""
        found = []
        with os.scandir(self.root) as entries:
            for entry in entries:
                digest = "sha256:" + entry.name[7:]
                if (
                    entry.name.startswith("sha256-")
                    and DIGEST_RE.fullmatch(digest)
                    and entry.is_file(follow_symlinks=False)
                ):
                    found.append(digest)
        return sorted(found)

    def remove_unused(self, digest: str) -> bool:
        """Remove a blob that gc() found unreferenced, unless a writer holds its lock or it was
        written moments ago by this process and its manifest is still to come."""
        lock_path = self.partial_dir / ("sha256-" + parse_digest(digest)[7:] + ".lock")
        fd = lock(lock_path, blocking=False)
        if fd is None:
            return False
        try:
            if self._pinned(digest):
                return False
            self.path(digest).unlink(missing_ok=True)
            self._stamp_path(digest).unlink(missing_ok=True)
            return True
        finally:
            unlock(lock_path, fd)

    def cleanup_partials(self) -> int:
        """Delete partial files that no live writer holds (left by a killed process), and their
        lock files. Returns how many partial files were deleted."""
        count = 0
        with os.scandir(self.partial_dir) as it:
            entries = sorted(e.name for e in it)
        for name in entries:
            if name.endswith(".lock"):
                continue
            lock_path = self.partial_dir / (name + ".lock")
            fd = lock(lock_path, blocking=False)
            if fd is None:
                continue  # a live writer
            try:
                target = self.partial_dir / name
                if not target.is_dir() or target.is_symlink():
                    target.unlink(missing_ok=True)
                    count += 1
            finally:
                unlock(lock_path, fd)
        for name in entries:  # lock files left without a partial
            if name.endswith(".lock") and name[:-5] not in entries:
                fd = lock(self.partial_dir / name, blocking=False)
                if fd is not None:
                    unlock(self.partial_dir / name, fd)
        if count:
            logger.info("removed %d stale partial file(s) in %s", count, self.partial_dir)
        return count

    def writer(
        self,
        expected: str | None = None,
        size: int | None = None,
        resume: bool = False,
        wait: bool = True,
    ) -> BlobWriter:
        """A writer for one blob; use as a context manager. See ``BlobWriter``. With
        ``wait=False`` a digest another writer holds raises ``BlobBusyError`` at once instead
        of blocking until that writer finishes."""
        return BlobWriter(self, expected, size, resume, wait)

    def import_file(self, src: Path, expected: str | None = None, link: bool = True) -> str:
        """Place an existing file in the store and return its digest.

        The file is hard-linked (when ``link``), else reflinked (FICLONE), else copied into
        ``.partial``; the placed bytes are hashed there and, if ``expected`` is given and differs,
        deleted with ``DigestMismatchError``. A hard link shares the source's inode, so the source
        also becomes read-only; pass ``link=False`` for files their owner may rewrite in place.
        """
        return self.place_file(src, expected, link)[0]

    def place_file(
        self, src: Path, expected: str | None = None, link: bool = True
    ) -> tuple[str, bool]:
        """``import_file`` that also says whether the blob is new (False: it was stored already)."""
        src = Path(src)
        if not stat.S_ISREG(os.stat(src).st_mode):
            raise ValueError(f"{src}: not a regular file")
        if expected is not None:
            expected = parse_digest(expected)
            if self.has(expected):
                self._pin(expected)
                return expected, False
        key = f"tmp-{uuid.uuid4().hex}"
        tmp, lock_path = self.partial_dir / key, self.partial_dir / (key + ".lock")
        fd = lock(lock_path, blocking=True)
        assert fd is not None
        try:
            digest = copy_into(src, tmp, link)
            if expected is not None and digest != expected:
                raise DigestMismatchError(f"{src}: content is {digest}, expected {expected}")
            return digest, self._install(tmp, digest)
        finally:
            tmp.unlink(missing_ok=True)
            unlock(lock_path, fd)

    def _install(self, tmp: Path, digest: str) -> bool:
        """Move a verified temporary file to its final name under the digest's lock; False if
        the blob was already stored (tmp is left for the caller to delete)."""
        lock_path = self.partial_dir / ("sha256-" + digest[7:] + ".lock")
        fd = lock(lock_path, blocking=True)
        assert fd is not None
        try:
            created = not self.has(digest)
            if created:
                mode = os.stat(tmp).st_mode
                try:
                    os.chmod(tmp, stat.S_IMODE(mode) & ~0o222 | 0o444)
                except PermissionError:  # a hard link to a file we do not own
                    pass
                os.replace(tmp, self.path(digest))
                fsync_dir(self.root)
                self._stamp_final(digest)
            self._pin(digest)
            return created
        finally:
            unlock(lock_path, fd)

    def _pin(self, digest: str) -> None:
        with _pins_lock:
            _pins.setdefault(str(self.root), {})[digest] = time.monotonic()

    def unpin(self, digests: list[str]) -> None:
        """Called once a manifest references these digests: gc() may judge them normally."""
        with _pins_lock:
            pins = _pins.get(str(self.root), {})
            for d in digests:
                pins.pop(d, None)

    def _pinned(self, digest: str) -> bool:
        with _pins_lock:
            when = _pins.get(str(self.root), {}).get(digest)
        return when is not None and time.monotonic() - when < PIN_SECONDS


def _stamp_text(st: os.stat_result) -> str:
    return f"{st.st_size} {st.st_mtime_ns} {st.st_ino} {st.st_dev}\n"
