"""The file-level pieces the blob store is built from: digests and the errors of verifying
them, hashing, lock files, durable renames and copies.

A digest is untrusted input (registries, manifests, HTTP paths), so it is parsed against
``^sha256:[0-9a-f]{64}$`` before it names a file. Nothing here knows the store's layout;
``blobs.py`` does.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import re
import stat
from pathlib import Path

__all__ = [
    "CHUNK_BYTES",
    "DIGEST_RE",
    "DigestError",
    "DigestMismatchError",
    "SizeMismatchError",
    "copy_into",
    "disk_full",
    "fsync_dir",
    "hash_fd",
    "lock",
    "parse_digest",
    "unlock",
    "write_all",
]

DIGEST_RE = re.compile(r"^sha256:[0-9a-f]{64}$")
CHUNK_BYTES = 1 << 20
FICLONE = 0x40049409  # _IOW(0x94, 9, int): share extents with another file (btrfs, xfs)


class DigestError(ValueError):
    """A digest string is not ``sha256:`` followed by 64 lower-case hex digits."""


class DigestMismatchError(ValueError):
    """Content does not hash to the expected digest; the temporary file is already deleted."""


class SizeMismatchError(ValueError):
    """Content is longer or shorter than its declared size; the temporary file is deleted."""


def parse_digest(text: str) -> str:
    """Validate ``sha256:<64 lower-case hex>`` and return it. Raises ``DigestError``."""
    if not isinstance(text, str) or len(text) != 71 or DIGEST_RE.fullmatch(text) is None:
        shown = repr(text[:80]) if isinstance(text, str) else type(text).__name__
        raise DigestError(f"invalid digest {shown}: expected sha256:<64 lower-case hex digits>")
    return text


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def lock(path: Path, blocking: bool) -> int | None:
    """Hold an exclusive flock on ``path`` (created if missing); None if busy and not blocking.

    The holder unlinks the lock file before releasing it, so after acquiring we check that the
    path still names the locked inode; if not, someone finished meanwhile and we lock afresh.
    """
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
        except BlockingIOError:
            os.close(fd)
            return None
        except BaseException:
            os.close(fd)
            raise
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            os.close(fd)
            continue
        held = os.fstat(fd)
        if (st.st_ino, st.st_dev) == (held.st_ino, held.st_dev):
            return fd
        os.close(fd)


def unlock(path: Path, fd: int) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    finally:
        os.close(fd)


def hash_fd(fd: int) -> tuple[hashlib._Hash, int]:
    """sha256 and length of what is left to read from ``fd``."""
    hasher = hashlib.sha256()
    total = 0
    while chunk := os.read(fd, CHUNK_BYTES):
        hasher.update(chunk)
        total += len(chunk)
    return hasher, total


def write_all(fd: int, data: bytes | memoryview) -> None:
    view = memoryview(data)
    while view:
        n = os.write(fd, view)
        view = view[n:]


def disk_full(exc: BaseException | None) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


def copy_into(src: Path, tmp: Path, link: bool) -> str:
    """Put src's bytes at ``tmp`` (hard link when ``link``, else reflink, else a copy) and
    return the digest of what landed at ``tmp``."""
    if link:
        try:
            os.link(src, tmp)
        except OSError:
            pass
        else:
            if not stat.S_ISREG(os.lstat(tmp).st_mode):
                raise ValueError(f"{src}: not a regular file")
            fd = os.open(tmp, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                hasher, _ = hash_fd(fd)
            finally:
                os.close(fd)
            return "sha256:" + hasher.hexdigest()
    sfd = os.open(src, os.O_RDONLY | os.O_CLOEXEC)
    try:
        if not stat.S_ISREG(os.fstat(sfd).st_mode):
            raise ValueError(f"{src}: not a regular file")
        dfd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            try:
                fcntl.ioctl(dfd, FICLONE, sfd)
                hasher, _ = hash_fd(dfd)
            except OSError:  # not supported here: copy, hashing as we go
                os.ftruncate(dfd, 0)
                os.lseek(dfd, 0, os.SEEK_SET)
                hasher = hashlib.sha256()
                while chunk := os.read(sfd, CHUNK_BYTES):
                    hasher.update(chunk)
                    write_all(dfd, chunk)
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)
    return "sha256:" + hasher.hexdigest()
