"""``BlobWriter``: the one way bytes become a blob (see ``blobs.py`` for the layout and the
locking). Hashes and counts as bytes arrive; ``commit`` checks the declared size and digest,
then renames into place."""

from __future__ import annotations

import hashlib
import logging
import os
import uuid
from types import TracebackType
from typing import TYPE_CHECKING

from heron.store.files import (
    DigestMismatchError,
    SizeMismatchError,
    disk_full,
    fsync_dir,
    hash_fd,
    lock,
    parse_digest,
    unlock,
    write_all,
)

if TYPE_CHECKING:
    from heron.store.blobs import BlobStore

logger = logging.getLogger(__name__)


class BlobBusyError(RuntimeError):
    """Another writer holds the digest's lock (raised by ``writer(..., wait=False)``)."""


class BlobWriter:
    """Writes one blob through ``.partial``: hashes and counts bytes as they arrive.

    Construction takes the digest's lock (blocking while another writer of the same digest is
    alive). ``done`` is True when the blob is already stored: nothing to write, ``commit()``
    returns the digest. With ``resume`` the bytes of an earlier partial are kept and re-hashed,
    and ``offset`` says how many there are. Leaving the ``with`` block without ``commit()``, or
    with an exception, deletes the partial; with ``resume`` an exception other than a size or
    digest mismatch or a full disk keeps it, so a retry can continue from ``offset``.
    """

    __slots__ = (
        "_store",
        "expected",
        "size",
        "resume",
        "done",
        "offset",
        "_hasher",
        "_fd",
        "_lock_fd",
        "_partial",
        "_lock_path",
        "_finished",
    )

    def __init__(
        self,
        store: BlobStore,
        expected: str | None,
        size: int | None,
        resume: bool,
        wait: bool = True,
    ) -> None:
        if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size < 0):
            raise ValueError(f"declared size must be a non-negative integer, got {size!r}")
        self._store = store
        self.expected = parse_digest(expected) if expected is not None else None
        self.size = size
        self.resume = resume
        self.done = False
        self.offset = 0
        self._hasher = hashlib.sha256()
        self._fd: int | None = None
        self._finished = False
        key = f"sha256-{self.expected[7:]}" if self.expected else f"tmp-{uuid.uuid4().hex}"
        self._partial = store.partial_dir / key
        self._lock_path = store.partial_dir / (key + ".lock")
        self._lock_fd: int | None = lock(self._lock_path, blocking=wait)
        if self._lock_fd is None:
            self._finished = True
            raise BlobBusyError(f"another writer is storing {self.expected or 'this blob'}")
        try:
            if self.expected is not None and store.has(self.expected):
                store._pin(self.expected)
                self.done = True
                self._release()
                return
            self._open()
        except BaseException:
            self._release()
            raise

    def _open(self) -> None:
        flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        self._fd = os.open(self._partial, flags, 0o600)
        if self.resume:
            self._hasher, self.offset = hash_fd(self._fd)
            if self.size is not None and self.offset > self.size:
                self._restart()
        else:
            self._restart()

    def _restart(self) -> None:
        assert self._fd is not None
        os.ftruncate(self._fd, 0)
        os.lseek(self._fd, 0, os.SEEK_SET)
        self._hasher, self.offset = hashlib.sha256(), 0

    def write(self, data: bytes) -> None:
        """Append ``data``; ``SizeMismatchError`` (partial deleted) if it passes the size."""
        if self._finished or self._fd is None:
            raise RuntimeError("blob writer is closed" if not self.done else "blob is present")
        if self.size is not None and self.offset + len(data) > self.size:
            declared = self.size
            self.abort()
            raise SizeMismatchError(f"more than the declared {declared} bytes")
        write_all(self._fd, data)
        self._hasher.update(data)
        self.offset += len(data)

    def commit(self) -> str:
        """Check size and digest and move the blob into place; returns its digest.

        On a mismatch the partial is deleted and ``SizeMismatchError``/``DigestMismatchError``
        is raised; nothing is stored."""
        if self.done:
            assert self.expected is not None
            return self.expected
        if self._finished or self._fd is None:
            raise RuntimeError("blob writer is closed")
        try:
            os.fsync(self._fd)
            if self.size is not None and self.offset != self.size:
                raise SizeMismatchError(f"got {self.offset} bytes, declared {self.size}")
            digest = "sha256:" + self._hasher.hexdigest()
            if self.expected is not None and digest != self.expected:
                raise DigestMismatchError(f"content is {digest}, expected {self.expected}")
            os.close(self._fd)
            self._fd = None
            if self.expected is not None:  # we hold the digest's lock already
                if not self._store.has(digest):
                    os.chmod(self._partial, 0o444)
                    os.replace(self._partial, self._store.path(digest))
                    fsync_dir(self._store.root)
                    self._store._stamp_final(digest)
                self._store._pin(digest)
            else:
                self._store._install(self._partial, digest)
        except BaseException:
            self.abort()
            raise
        self._partial.unlink(missing_ok=True)
        self._release()
        return digest

    def abort(self) -> None:
        """Delete the partial file and release the lock. Idempotent."""
        if self._finished:
            return
        self._close_fd()
        self._partial.unlink(missing_ok=True)
        self._release()

    def _close_fd(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def _release(self) -> None:
        self._finished = True
        if self._lock_fd is not None:
            fd, self._lock_fd = self._lock_fd, None
            unlock(self._lock_path, fd)

    def __enter__(self) -> BlobWriter:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._finished:
            return
        keep = (
            exc is not None
            and self.resume
            and not isinstance(exc, (SizeMismatchError, DigestMismatchError))
            and not disk_full(exc)
        )
        if keep:  # leave the partial for a later resume; the lock goes
            self._close_fd()
            self._release()
        else:
            self.abort()

    def __del__(self) -> None:
        try:
            self._close_fd()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
        except Exception:
            pass
