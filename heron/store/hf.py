"""GGUF files from the Hugging Face Hub: ``hf.co/org/repo[:quant]``.

The repository's file list and each file's LFS sha256 come from the Hub's model info; the
file is fetched with ``hf_hub_download`` (which resumes its own ``.incomplete`` files) into a
cache under ``<models>/tmp/hf`` pinned to the commit the info came from, then imported into the
blob store against that sha256. The endpoint is ``HF_ENDPOINT`` (default huggingface.co), read
at each pull; only HTTPS, or plain HTTP to a loopback address, is used.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from heron.env import is_loopback_host
from heron.store.catalog import PullError
from heron.store.files import DigestMismatchError
from heron.store.names import InvalidNameError, ModelName, parse_name

__all__ = ["DEFAULT_QUANT", "HF_HOSTS", "HfFile", "download", "is_hf_name", "resolve"]

HF_HOSTS = ("hf.co", "huggingface.co")
DEFAULT_ENDPOINT = "https://huggingface.co"
DEFAULT_QUANT = "Q4_K_M"
_SPLIT_GGUF = re.compile(r"-\d{5}-of-\d{5}\.gguf$", re.IGNORECASE)

Report = Callable[[int], None]


@dataclass(frozen=True, slots=True)
class HfFile:
    """One GGUF file of one Hub repository at one commit."""

    endpoint: str
    repo_id: str
    revision: str
    filename: str
    sha256: str
    size: int

    def __post_init__(self) -> None:
        if re.fullmatch(r"[0-9a-f]{64}", self.sha256) is None:
            raise PullError(f"{self.filename}: the Hub sent a malformed sha256")
        if self.size < 0:
            raise PullError(f"{self.filename}: the Hub sent a negative size")

    @property
    def digest(self) -> str:
        return f"sha256:{self.sha256}"


def is_hf_name(text: str) -> bool:
    """Whether ``text`` names a Hub repository (``hf.co/...`` or ``huggingface.co/...``)."""
    return isinstance(text, str) and text.split("/", 1)[0].lower() in HF_HOSTS


def parse_hf_name(text: str) -> tuple[ModelName, str, str | None]:
    """(the stored name, repo id with its original case, quant or None for the default)."""
    name = parse_name(text)  # validates every part; the stored name is lower-case
    parts = text.split("/")
    if len(parts) != 3:
        raise InvalidNameError(f"invalid model name {text!r}: use hf.co/org/repo[:quant]")
    repo, _, quant = parts[2].partition(":")
    name = ModelName("hf.co", name.namespace, name.model, name.tag)
    if not quant or quant.lower() == "latest":
        return name, f"{parts[1]}/{repo}", None
    return name, f"{parts[1]}/{repo}", quant


def endpoint() -> str:
    url = (os.environ.get("HF_ENDPOINT") or DEFAULT_ENDPOINT).rstrip("/")
    parts = urlsplit(url)
    if parts.scheme == "https" or (
        parts.scheme == "http" and is_loopback_host(parts.hostname or "")
    ):
        return url
    raise PullError(f"HF_ENDPOINT {url!r} must be HTTPS (or HTTP to a loopback address)")


def _hub_error(what: str, e: Exception) -> PullError:
    detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return PullError(f"{what}: {detail}")


def _choose(filenames: list[str], quant: str | None, repo_id: str) -> str:
    ggufs = [
        f
        for f in filenames
        if f.lower().endswith(".gguf") and not f.rsplit("/", 1)[-1].lower().startswith("mmproj")
    ]
    if not ggufs:
        raise PullError(f"hf.co/{repo_id} has no GGUF files")
    wanted = quant or DEFAULT_QUANT
    matches = [f for f in ggufs if wanted.lower() in f.rsplit("/", 1)[-1].lower()]
    if len(matches) > 1:  # "Q4_K" matches Q4_K_M and Q4_K_S: prefer a whole-token match
        token = re.compile(rf"(?<![a-z0-9]){re.escape(wanted)}(?![a-z0-9_])", re.IGNORECASE)
        matches = [f for f in matches if token.search(f.rsplit("/", 1)[-1])] or matches
    if not matches and quant is None and len(ggufs) == 1:
        matches = ggufs
    available = ", ".join(sorted(f.rsplit("/", 1)[-1] for f in ggufs))
    if not matches:
        raise PullError(f"hf.co/{repo_id} has no GGUF matching {wanted!r}; it has: {available}")
    if len(matches) > 1:
        raise PullError(
            f"hf.co/{repo_id}: {wanted!r} matches several files ({', '.join(sorted(matches))}); "
            "name the quantization exactly"
        )
    if _SPLIT_GGUF.search(matches[0]):
        raise PullError(f"{matches[0]} is one part of a split GGUF; Heron does not join those")
    return matches[0]


def resolve(repo_id: str, quant: str | None) -> HfFile:
    """Ask the Hub which GGUF to pull and what its sha256 is. PullError if it cannot say."""
    from huggingface_hub import HfApi

    url = endpoint()
    try:
        info = HfApi(endpoint=url).model_info(repo_id, files_metadata=True)
    except Exception as e:  # network, HTTP status, and malformed answers alike
        raise _hub_error(f"cannot get hf.co/{repo_id} from {url}", e) from None
    siblings = {s.rfilename: s for s in info.siblings or []}
    filename = _choose(list(siblings), quant, repo_id)
    lfs = siblings[filename].lfs
    if lfs is None:
        raise PullError(f"hf.co/{repo_id}: {filename} has no LFS sha256, so it cannot be verified")
    return HfFile(
        endpoint=url,
        repo_id=info.id or repo_id,
        revision=info.sha or "main",
        filename=filename,
        sha256=str(lfs.sha256).lower(),
        size=int(lfs.size),
    )


def _progress_class(report: Report) -> type[Any]:
    """A stand-in for tqdm that hf_hub_download drives; it draws nothing and reports bytes."""
    from tqdm import tqdm

    class _Bytes(tqdm):  # type: ignore[misc]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.pop("name", None)
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)
            self._done = int(kwargs.get("initial") or 0)

        def update(self, n: float | None = 1) -> bool | None:
            self._done += int(n or 0)
            report(max(self._done, 0))
            return None

    return _Bytes


def download(hf_file: HfFile, blobs: Any, cache_dir: Path, report: Report) -> str:
    """Download ``hf_file`` into ``cache_dir`` and import it into ``blobs`` (a BlobStore)
    against its sha256; returns the digest.

    The caller holds a lock that keeps other pulls of the same file out. ``cache_dir`` is
    removed once the file is imported or found wrong (a hard link keeps the blob), and kept
    after a network failure so that the next pull resumes. PullError on any failure; on a
    digest mismatch nothing is stored."""
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(
            hf_file.repo_id,
            hf_file.filename,
            revision=hf_file.revision,
            cache_dir=cache_dir,
            endpoint=hf_file.endpoint,
            tqdm_class=_progress_class(report),
        )
    except Exception as e:
        if isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT):
            shutil.rmtree(cache_dir, ignore_errors=True)  # else it stays for a resume
        raise _hub_error(
            f"download of {hf_file.filename} from hf.co/{hf_file.repo_id}", e
        ) from None
    try:
        # the snapshot entry is a symlink into the cache's blobs: import the file itself
        return str(blobs.import_file(Path(path).resolve(), expected=hf_file.digest))
    except DigestMismatchError:
        raise PullError(
            f"sha256 mismatch for {hf_file.filename} from hf.co/{hf_file.repo_id}: expected "
            f"{hf_file.sha256}; the download was deleted and nothing was stored"
        ) from None
    finally:
        shutil.rmtree(cache_dir, ignore_errors=True)
