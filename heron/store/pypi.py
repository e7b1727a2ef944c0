"""Wheels from the package index pip is configured with: discovery and verified, resumable
downloads.

Discovery reads pip's own configuration (files, sections and ``PIP_*`` variables, with pip's
precedence), unless ``HERON_PYPI_INDEX_URL`` names the indexes outright. Each index is asked
for the project's page with PEP 691 content negotiation (JSON preferred, PEP 503 HTML
accepted); ``file://`` indexes and find-links folders are read from disk.

A download goes to ``<tmp>/<wheel sha256>.partial``, hashing as bytes arrive and never past the
expected size. An existing partial is re-hashed and resumed with a ``Range`` request. Only
HTTPS, or plain HTTP to a loopback address, is fetched; redirects are followed by hand (at most
``MAX_REDIRECTS``) and index credentials are sent only to the index's own origin.
"""

from __future__ import annotations

import base64
import configparser
import errno
import hashlib
import json
import os
import re
import ssl
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit
from urllib.request import url2pathname

import httpx

from heron import env
from heron.store.catalog import PullError, WheelPin

__all__ = [
    "DEFAULT_INDEX_URL",
    "IndexConfig",
    "WheelLink",
    "download_wheel",
    "find_wheel",
    "http_client",
    "pip_config_files",
    "pip_index_config",
]

DEFAULT_INDEX_URL = "https://pypi.org/simple"
MAX_REDIRECTS = 5
MAX_PAGE_BYTES = 32 << 20  # a project page; PyPI's largest are a few MiB
MAX_ATTEMPTS = 4  # connection drops resumed within one download
CHUNK_BYTES = 1 << 20
_ACCEPT = (
    "application/vnd.pypi.simple.v1+json, application/vnd.pypi.simple.v1+html;q=0.2, "
    "text/html;q=0.01"
)
# pip applies [global], then the command's section, then PIP_* variables; Heron installs.
_SECTIONS = ("global", "download", "install")

Report = Callable[[int], None]  # bytes of the wheel verified so far


@dataclass(frozen=True, slots=True)
class IndexConfig:
    """Where to look for wheels, in order: the indexes, then the find-links locations."""

    index_urls: tuple[str, ...]
    find_links: tuple[str, ...] = ()
    cert: str | None = None  # pip's ``cert``: the CA bundle that replaces the default one

    def __post_init__(self) -> None:
        if not self.index_urls and not self.find_links:
            raise ValueError("no package index and no find-links location configured")


@dataclass(frozen=True, slots=True)
class WheelLink:
    """One wheel as an index lists it. ``auth`` goes only to ``auth_origin``."""

    filename: str
    url: str
    sha256: str | None = None
    size: int | None = None
    auth: tuple[str, str] | None = None
    auth_origin: tuple[str, str, int] | None = None


# ---------------------------------------------------------------- pip configuration


def pip_config_files(environ: Mapping[str, str] | None = None) -> list[Path]:
    """pip's configuration files, lowest precedence first (global, user, site, PIP_CONFIG_FILE)."""
    environ = os.environ if environ is None else environ
    xdg_dirs = environ.get("XDG_CONFIG_DIRS") or "/etc/xdg"
    files = [Path(d) / "pip" / "pip.conf" for d in xdg_dirs.split(os.pathsep) if d]
    files.append(Path("/etc/pip.conf"))
    config_file = environ.get("PIP_CONFIG_FILE")
    home = Path(environ.get("HOME") or Path.home())
    if not (config_file and Path(config_file).exists()):
        files.append(home / ".pip" / "pip.conf")
        xdg_home = environ.get("XDG_CONFIG_HOME") or str(home / ".config")
        files.append(Path(xdg_home) / "pip" / "pip.conf")
    files.append(Path(sys.prefix) / "pip.conf")
    venv = environ.get("VIRTUAL_ENV")
    if venv and Path(venv) / "pip.conf" not in files:
        files.append(Path(venv) / "pip.conf")
    if config_file and config_file != os.devnull:
        files.append(Path(config_file))
    return files


def pip_index_config(
    environ: Mapping[str, str] | None = None, config_files: Sequence[Path] | None = None
) -> IndexConfig:
    """The indexes, find-links and CA bundle pip would use for ``pip install``.

    Config files are merged in order, ``[install]`` beats ``[download]`` beats ``[global]``
    whichever file they come from, and ``PIP_INDEX_URL``/``PIP_EXTRA_INDEX_URL``/
    ``PIP_FIND_LINKS``/``PIP_NO_INDEX``/``PIP_CERT`` beat every file, as in pip.
    ``HERON_PYPI_INDEX_URL`` (space-separated URLs) replaces the indexes and find-links."""
    if environ is None:
        environ, override = os.environ, env.pypi_index_url()
    else:
        override = environ.get("HERON_PYPI_INDEX_URL")
    merged: dict[str, dict[str, str]] = {}
    for path in pip_config_files(environ) if config_files is None else config_files:
        parser = configparser.RawConfigParser()
        try:
            parser.read(path, encoding="utf-8")
        except (configparser.Error, UnicodeDecodeError, OSError):
            continue  # pip refuses to run on a broken file; Heron skips it
        for section in parser.sections():
            merged.setdefault(section, {}).update(
                {k.replace("_", "-"): v for k, v in parser.items(section)}
            )
    values: dict[str, str] = {}
    for section in _SECTIONS:
        values.update(merged.get(section, {}))
    for key in ("index-url", "extra-index-url", "find-links", "no-index", "cert"):
        env_value = environ.get("PIP_" + key.upper().replace("-", "_"))
        if env_value:
            values[key] = env_value
    cert = values.get("cert", "").strip() or None
    if override:
        return IndexConfig(index_urls=tuple(override.split()), cert=cert)
    index_url = values.get("index-url", "").strip() or DEFAULT_INDEX_URL
    indexes = [index_url, *values.get("extra-index-url", "").split()]
    if values.get("no-index", "").strip().lower() in ("1", "true", "yes", "on"):
        indexes = []
    find_links = values.get("find-links", "").split()
    if not indexes and not find_links:
        raise PullError("pip is configured with no-index and no find-links: nowhere to look")
    return IndexConfig(
        index_urls=tuple(dict.fromkeys(indexes)),
        find_links=tuple(dict.fromkeys(find_links)),
        cert=cert,
    )


# ---------------------------------------------------------------- URLs and HTTP


def normalize_project(name: str) -> str:
    """PEP 503 normalised project name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def _origin(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    port = parts.port or (443 if parts.scheme == "https" else 80)
    return parts.scheme, (parts.hostname or "").lower(), port


def _check_remote(url: str) -> None:
    parts = urlsplit(url)
    if parts.scheme == "https" or (
        parts.scheme == "http" and env.is_loopback_host(parts.hostname or "")
    ):
        return
    raise PullError(f"refusing to fetch {_redact(url)}: only HTTPS (or HTTP to loopback) is used")


def _redact(url: str) -> str:
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


def _split_auth(url: str) -> tuple[str, tuple[str, str] | None]:
    """The URL without user info, and the credentials it carried."""
    parts = urlsplit(url)
    if parts.username is None:
        return url, None
    return _redact(url), (unquote(parts.username), unquote(parts.password or ""))


def _ssl_context(cert: str | None) -> ssl.SSLContext:
    """pip's ``cert`` if set (it replaces the default bundle, as in pip), else ``SSL_CERT_FILE``
    or ``SSL_CERT_DIR``, else the system's trust store plus certifi's bundle."""
    if cert:
        path = Path(cert).expanduser()
        if path.is_dir():
            return ssl.create_default_context(capath=str(path))
        return ssl.create_default_context(cafile=str(path))
    if os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR"):
        return ssl.create_default_context(
            cafile=os.environ.get("SSL_CERT_FILE") or None,
            capath=os.environ.get("SSL_CERT_DIR") or None,
        )
    ctx = ssl.create_default_context()
    try:
        import certifi

        ctx.load_verify_locations(cafile=certifi.where())
    except (ImportError, OSError):
        pass
    return ctx


def http_client(cert: str | None = None) -> httpx.Client:
    """The client pulls use: redirects are followed by ``_open`` (never automatically), proxies
    come from the environment as for pip, and TLS trusts ``cert`` (see ``_ssl_context``)."""
    from heron import __version__

    try:
        verify = _ssl_context(cert)
    except (OSError, ssl.SSLError) as e:
        raise PullError(f"cannot load the CA certificates {cert!r}: {e}") from None
    return httpx.Client(
        follow_redirects=False,
        verify=verify,
        timeout=httpx.Timeout(30.0, connect=10.0),
        headers={"User-Agent": f"heron/{__version__}"},
    )


@contextmanager
def _open(
    client: httpx.Client,
    url: str,
    headers: dict[str, str],
    auth: tuple[str, str] | None = None,
    auth_origin: tuple[str, str, int] | None = None,
) -> Iterator[httpx.Response]:
    """GET ``url`` streamed, following at most MAX_REDIRECTS redirects by hand. Credentials
    are attached only while the request's origin is ``auth_origin``."""
    for _ in range(MAX_REDIRECTS + 1):
        _check_remote(url)
        use_auth = auth if auth is not None and _origin(url) == auth_origin else None
        request = client.build_request("GET", url, headers=headers)
        if use_auth is not None:
            token = base64.b64encode(f"{use_auth[0]}:{use_auth[1]}".encode()).decode()
            request.headers["Authorization"] = f"Basic {token}"
        try:
            response = client.send(request, stream=True)
        except httpx.HTTPError as e:
            raise PullError(f"cannot reach {_redact(url)}: {e}") from None
        if response.is_redirect and "location" in response.headers:
            location = urljoin(url, response.headers["location"])
            response.close()
            url = location
            continue
        try:
            yield response
        finally:
            response.close()
        return
    raise PullError(f"too many redirects (more than {MAX_REDIRECTS}) fetching {_redact(url)}")


# ---------------------------------------------------------------- index pages


class _AnchorParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.base: str | None = None
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        href = dict(attrs).get("href")
        if href is None:
            return
        if tag == "base" and self.base is None:
            self.base = href
        elif tag == "a":
            self.hrefs.append(href)


def _links_from_html(page_url: str, text: str) -> list[WheelLink]:
    parser = _AnchorParser()
    parser.feed(text)
    base = urljoin(page_url, parser.base) if parser.base else page_url
    links = []
    for href in parser.hrefs:
        url = urljoin(base, href)
        url, _, fragment = url.partition("#")
        sha256 = None
        for part in fragment.split("&"):
            algo, _, value = part.partition("=")
            if algo == "sha256":
                sha256 = value.lower()
        filename = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
        links.append(WheelLink(filename=filename, url=_redact(url), sha256=sha256))
    return links


def _links_from_json(page_url: str, text: str) -> list[WheelLink]:
    try:
        files = json.loads(text).get("files", [])
    except (ValueError, AttributeError):
        return []
    links = []
    for entry in files if isinstance(files, list) else []:
        if not isinstance(entry, dict):
            continue
        filename, url = entry.get("filename"), entry.get("url")
        hashes, size = entry.get("hashes") or {}, entry.get("size")
        if not isinstance(filename, str) or not isinstance(url, str):
            continue
        links.append(
            WheelLink(
                filename=filename,
                url=_redact(urljoin(page_url, url).partition("#")[0]),
                sha256=str(hashes.get("sha256", "")).lower() or None,
                size=size if isinstance(size, int) and not isinstance(size, bool) else None,
            )
        )
    return links


def _local_path(url: str) -> Path:
    return Path(url2pathname(urlsplit(url).path))


def _read_local_page(path: Path, page_url: str) -> list[WheelLink] | None:
    if path.is_dir():
        path = path / "index.html"
    if not path.is_file() or path.stat().st_size > MAX_PAGE_BYTES:
        return None
    return _links_from_html(page_url, path.read_text(encoding="utf-8", errors="replace"))


def _read_remote_page(client: httpx.Client, page_url: str) -> list[WheelLink] | None:
    clean_url, auth = _split_auth(page_url)
    origin = _origin(clean_url)
    with _open(client, clean_url, {"Accept": _ACCEPT}, auth, origin) as response:
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise PullError(f"{_redact(page_url)} answered HTTP {response.status_code}")
        body = bytearray()
        for chunk in response.iter_bytes():
            body += chunk
            if len(body) > MAX_PAGE_BYTES:
                raise PullError(f"{_redact(page_url)}: index page larger than {MAX_PAGE_BYTES}")
        final_url = str(response.url)
        kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
    text = body.decode("utf-8", errors="replace")
    links = (
        _links_from_json(final_url, text)
        if kind.endswith("+json") or kind == "application/json"
        else _links_from_html(final_url, text)
    )
    with_auth = []
    for link in links:
        with_auth.append(
            WheelLink(link.filename, link.url, link.sha256, link.size, auth, origin)
            if auth is not None
            else link
        )
    return with_auth


def _project_pages(project: str, config: IndexConfig) -> Iterator[tuple[str, bool]]:
    """(page URL, is the page a find-links location) in search order."""
    for index in config.index_urls:
        yield index.rstrip("/") + "/" + normalize_project(project) + "/", False
    for location in config.find_links:
        if "://" not in location:
            location = Path(location).absolute().as_uri()
        yield location, True


def find_wheel(
    pin: WheelPin, config: IndexConfig, client: httpx.Client
) -> tuple[WheelLink, list[str]]:
    """The first listing of ``pin.filename`` whose declared hash and size agree with the pin,
    and notes on the places skipped. PullError when no index has it."""
    notes: list[str] = []
    for page_url, is_find_links in _project_pages(pin.project, config):
        scheme = urlsplit(page_url).scheme
        try:
            if scheme == "file":
                path = _local_path(page_url)
                if is_find_links and path.is_dir():
                    wheel = path / pin.filename
                    links = [WheelLink(pin.filename, wheel.as_uri())] if wheel.is_file() else []
                else:
                    links = _read_local_page(path, page_url) or []
            else:
                links = _read_remote_page(client, page_url) or []
        except PullError as e:
            notes.append(str(e))
            continue
        for link in links:
            if link.filename != pin.filename:
                continue
            if link.sha256 is not None and link.sha256 != pin.sha256:
                notes.append(
                    f"{_redact(page_url)} lists {pin.filename} with sha256 {link.sha256}, "
                    f"not the pinned {pin.sha256}"
                )
                continue
            if link.size is not None and link.size != pin.size:
                notes.append(
                    f"{_redact(page_url)} lists {pin.filename} with size {link.size}, "
                    f"not the pinned {pin.size}"
                )
                continue
            if urlsplit(link.url).scheme == "file" and scheme != "file":
                notes.append(f"{_redact(page_url)} points at a local file; ignored")
                continue
            return link, notes
        notes.append(f"{_redact(page_url)}: no {pin.filename}")
    raise PullError(
        f"wheel {pin.filename} not found in the configured package indexes"
        + (": " + "; ".join(notes) if notes else "")
    )


# ---------------------------------------------------------------- downloads


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


def _mismatch(pin: WheelPin, got: str) -> PullError:
    return PullError(
        f"sha256 mismatch for {pin.filename}: expected {pin.sha256}, got {got}; "
        "the download was deleted and nothing was stored"
    )


def download_wheel(
    link: WheelLink, pin: WheelPin, tmp_dir: Path, client: httpx.Client, report: Report
) -> tuple[Path, bool]:
    """Fetch and verify one wheel; returns (path, whether the caller owns and should delete it).

    A local wheel is hashed in place and never copied or deleted. A remote one lands in
    ``tmp_dir/<sha256>.partial``, resumed if it is already there; the caller must hold a lock
    that keeps other pulls of the same wheel out. Never more than ``pin.size`` bytes are
    written. On a digest mismatch the partial is deleted and PullError raised."""
    if urlsplit(link.url).scheme == "file":
        path = _local_path(link.url)
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
        digest, offset = (
            _hash_file(partial, pin.size, report) if partial.exists() else (hashlib.sha256(), 0)
        )
        if offset > pin.size:
            partial.unlink()
            digest, offset = hashlib.sha256(), 0
        if offset == pin.size and digest.hexdigest() != pin.sha256:
            partial.unlink()  # a stale partial from an earlier run: start over
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
            raise _mismatch(pin, digest.hexdigest())
        return partial, True
    raise PullError(
        f"download of {pin.filename} failed {MAX_ATTEMPTS} times ({last_error}); "
        "pull again to resume it"
    )


class _Interrupted(Exception):
    """The connection dropped; the partial file keeps what arrived."""


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
    connection drops and PullError when the server misbehaves."""
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    with _open(client, link.url, headers, link.auth, link.auth_origin) as response:
        status = response.status_code
        if status == 416 or (status == 200 and offset):
            partial.unlink(missing_ok=True)
            return False
        if status == 206:
            match = re.match(r"bytes (\d+)-", response.headers.get("content-range", ""))
            if match is None or int(match.group(1)) != offset:
                partial.unlink(missing_ok=True)
                return False
        elif status != 200:
            raise PullError(f"{_redact(link.url)} answered HTTP {status}")
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
                        raise _TooLong
                    f.write(chunk)
                    digest.update(chunk)
                    report(done)
        except _TooLong:
            partial.unlink(missing_ok=True)
            raise PullError(
                f"{pin.filename}: the server sent more than {pin.size} bytes; "
                "the download was deleted"
            ) from None
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


class _TooLong(Exception):
    pass
