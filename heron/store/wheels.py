"""Verified, resumable wheel downloads from the links ``pypi.find_wheel`` returns.

A download goes to ``<tmp>/<wheel sha256>.partial``, hashing as bytes arrive and never past the
expected size. An existing partial is re-hashed and resumed with a ``Range`` request; a wheel
that does not hash to its pin is deleted and nothing is kept.
"""

from __future__ import annotations

import errno
import hashlib
import re
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

import httpx

from heron.store.catalog import PullError, WheelPin
from heron.store.pypi import WheelLink, get, local_path, redact

__all__ = ["download_wheel"]

MAX_ATTEMPTS = 4  # connection drops resumed within one download
CHUNK_BYTES = 1 << 20

Report = Callable[[int], None]  # bytes of the wheel verified so far


def _hash_file(path: Path, limit: int, report: Report) -> tuple[hashlib._Hash, int]:
    """sha256 of the first ``limit + 1`` bytes at most (one more shows the file is too long)."""
    digest = hashlib.sha256()
    done = 0
    with open(path, "rb") as f:
        while chunk := f.read(min(CHUNK_BYTES, limit + 1 - done)):
            done += len(chunk)
            digest.update(chunk)
            report(min(done, limit))
    return digest, done


def download_wheel(
    link: WheelLink, pin: WheelPin, tmp_dir: Path, client: httpx.Client, report: Report
) -> tuple[Path, bool]:
    """Fetch and verify one wheel; returns (path, whether the caller owns and should delete it).

    A local wheel is hashed in place and never copied or deleted. A remote one lands in
    ``tmp_dir/<sha256>.partial``, resumed if it is already there; the caller must hold a lock
    that keeps other pulls of the same wheel out. Never more than ``pin.size`` bytes are
    written. On a digest mismatch the partial is deleted and PullError raised."""
    if urlsplit(link.url).scheme == "file":
        path = local_path(link.url)
        try:
            digest, done = _hash_file(path, pin.size, report)
        except OSError as e:
            raise PullError(f"cannot read {path}: {e.strerror or e}") from None
        if done != pin.size or digest.hexdigest() != pin.sha256:
            raise PullError(
                f"{path} does not match the pinned wheel {pin.filename} (sha256 {pin.sha256})"
            )
        return path, False
    tmp_dir.mkdir(parents=True, exist_ok=True)
    partial = tmp_dir / f"{pin.sha256}.partial"
    last_error = "no attempt made"
    for _attempt in range(MAX_ATTEMPTS):
        digest, offset = hashlib.sha256(), 0
        if partial.exists():
            digest, offset = _hash_file(partial, pin.size, report)
            # too long, or complete but wrong (a stale partial of an earlier run): start over
            if offset > pin.size or (offset == pin.size and digest.hexdigest() != pin.sha256):
                partial.unlink()
                digest, offset = hashlib.sha256(), 0
        if offset < pin.size:
            try:
                if not _fetch_into(link, pin, partial, digest, offset, client, report):
                    continue  # the server would not resume: start over
            except _Interrupted as e:
                last_error = str(e)
                time.sleep(0.05)
                continue
        if digest.hexdigest() != pin.sha256:
            partial.unlink(missing_ok=True)
            raise PullError(
                f"sha256 mismatch for {pin.filename}: expected {pin.sha256}, got "
                f"{digest.hexdigest()}; the download was deleted and nothing was stored"
            )
        return partial, True
    raise PullError(
        f"download of {pin.filename} failed {MAX_ATTEMPTS} times ({last_error}); "
        "pull again to resume it"
    )


def _fetch_into(
    link: WheelLink,
    pin: WheelPin,
    partial: Path,
    digest: hashlib._Hash,
    offset: int,
    client: httpx.Client,
    report: Report,
) -> bool:
    """Append the rest of the wheel to ``partial``, feeding ``digest``. Returns False when the
    partial had to be discarded (the caller starts over); raises _Interrupted when the
    connection drops (the partial keeps what arrived) and PullError when the server
    misbehaves."""
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with get(client, link.url, headers, link.auth) as response:
        status = response.status_code
        range_start = re.match(r"bytes (\d+)-", response.headers.get("content-range", ""))
        if (
            status == 416
            or (status == 200 and offset)
            or (status == 206 and (range_start is None or int(range_start.group(1)) != offset))
        ):
            partial.unlink(missing_ok=True)
            return False
        if status not in (200, 206):
            raise PullError(f"{redact(link.url)} answered HTTP {status}")
        length = response.headers.get("content-length", "")
        if length.isdigit() and offset + int(length) != pin.size:
            raise PullError(
                f"{pin.filename}: the server offers {offset + int(length)} bytes, "
                f"the pin says {pin.size}"
            )
        done = offset
        try:
            with open(partial, "ab") as f:
                for chunk in response.iter_raw():
                    done += len(chunk)
                    if done > pin.size:
                        f.close()
                        partial.unlink(missing_ok=True)
                        raise PullError(
                            f"{pin.filename}: the server sent more than {pin.size} bytes; "
                            "the download was deleted"
                        )
                    f.write(chunk)
                    digest.update(chunk)
                    report(done)
        except httpx.HTTPError as e:
            raise _Interrupted(f"{type(e).__name__}: {e}") from None
        except OSError as e:
            if e.errno in (errno.ENOSPC, errno.EDQUOT):
                partial.unlink(missing_ok=True)  # give the space back
            raise PullError(
                f"cannot write {pin.filename} under {partial.parent}: {e.strerror or e}"
            ) from None
    if done < pin.size:
        raise _Interrupted(f"connection closed after {done} of {pin.size} bytes")
    return True


class _Interrupted(Exception):
    """The connection dropped; the partial file keeps what arrived."""
