"""Wheels on the package index pip is configured with: the HTTP client and discovery
(``wheels.py`` downloads them).

Discovery reads pip's own configuration (files, sections and ``PIP_*`` variables, with pip's
precedence), unless ``HERON_PYPI_INDEX_URL`` names the indexes outright. Each index is asked
for the project's page through the PEP 691 JSON simple API; an index that only answers with a
PEP 503 HTML page is read for its links too, and so are ``file://`` indexes (read from disk).
Wheels are matched with ``packaging``'s wheel file name parsing.

Only HTTPS, or plain HTTP to a loopback address, is fetched, on every redirect hop; httpx
follows at most ``MAX_REDIRECTS`` and drops an index's credentials when a redirect leaves the
index's origin.
"""

from __future__ import annotations

import html
import json
import os
import re
import ssl
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import unquote, urljoin, urlsplit, urlunsplit
from urllib.request import url2pathname

import httpx
from packaging.utils import InvalidWheelFilename, canonicalize_name, parse_wheel_filename

from heron import env
from heron.store.catalog import PullError, WheelPin
from heron.store.pipconf import IndexConfig

__all__ = ["WheelLink", "find_wheel", "get", "http_client", "local_path", "redact"]

MAX_REDIRECTS = 5
MAX_PAGE_BYTES = 32 << 20  # a project page; PyPI's largest are a few MiB
PEP691_JSON = "application/vnd.pypi.simple.v1+json"
_ACCEPT = f"{PEP691_JSON}, text/html;q=0.01"
_HREF = re.compile(r"""<a\s[^>]*?\bhref\s*=\s*["']([^"']*)["']""", re.IGNORECASE)


@dataclass(frozen=True, slots=True)
class WheelLink:
    """One wheel as an index lists it. ``auth`` is set only for a link on its index's origin."""

    filename: str
    url: str
    sha256: str | None = None
    size: int | None = None
    auth: tuple[str, str] | None = None


# ---------------------------------------------------------------- HTTP


def _check_remote(request: httpx.Request) -> None:
    """A request hook: every hop of every fetch is HTTPS, or plain HTTP to loopback."""
    url = request.url
    if url.scheme == "https" or (url.scheme == "http" and env.is_loopback_host(url.host)):
        return
    raise PullError(f"refusing to fetch {redact(str(url))}: only HTTPS (or HTTP to loopback)")


def redact(url: str) -> str:
    """``url`` without its user info (credentials never appear in messages or links)."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    netloc = (parts.hostname or "") + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def _ssl_context(cert: str | None) -> ssl.SSLContext:
    """pip's ``cert`` if set (it replaces the default bundle, as in pip), else the system's
    trust store (which honours ``SSL_CERT_FILE``/``SSL_CERT_DIR``), plus certifi's bundle
    unless one of those two is set."""
    if cert:
        path = Path(cert).expanduser()
        if path.is_dir():
            return ssl.create_default_context(capath=str(path))
        return ssl.create_default_context(cafile=str(path))
    ctx = ssl.create_default_context()
    if not (os.environ.get("SSL_CERT_FILE") or os.environ.get("SSL_CERT_DIR")):
        with suppress(ImportError, OSError):
            import certifi

            ctx.load_verify_locations(cafile=certifi.where())
    return ctx


def http_client(cert: str | None = None) -> httpx.Client:
    """The client pulls use: redirects followed (at most MAX_REDIRECTS, each hop checked by
    ``_check_remote``), proxies from the environment as for pip, TLS trusting ``cert``."""
    from heron import __version__

    try:
        verify = _ssl_context(cert)
    except (OSError, ssl.SSLError) as e:
        raise PullError(f"cannot load the CA certificates {cert!r}: {e}") from None
    return httpx.Client(
        follow_redirects=True,
        max_redirects=MAX_REDIRECTS,
        verify=verify,
        timeout=httpx.Timeout(30.0, connect=10.0),
        headers={"User-Agent": f"heron/{__version__}"},
        event_hooks={"request": [_check_remote]},
    )


@contextmanager
def get(
    client: httpx.Client, url: str, headers: dict[str, str], auth: tuple[str, str] | None = None
) -> Iterator[httpx.Response]:
    """GET ``url`` (redirects followed), its body left to stream; PullError if no response
    comes. Errors while the body streams are the caller's."""
    request = client.build_request("GET", url, headers=headers)
    try:
        response = client.send(request, auth=auth, stream=True)
    except httpx.TooManyRedirects:
        raise PullError(f"too many redirects (more than {MAX_REDIRECTS}) fetching {url}") from None
    except httpx.HTTPError as e:
        raise PullError(f"cannot reach {url}: {e}") from None
    try:
        yield response
    finally:
        response.close()


# ---------------------------------------------------------------- project pages


def _links_from_json(page_url: str, text: str) -> list[WheelLink]:
    """The files of a PEP 691 project page."""
    try:
        files = json.loads(text).get("files", [])
    except (ValueError, AttributeError):
        return []
    links = []
    for entry in files if isinstance(files, list) else []:
        if not isinstance(entry, dict):
            continue
        filename, url, size = entry.get("filename"), entry.get("url"), entry.get("size")
        hashes = entry.get("hashes")
        sha256 = hashes.get("sha256") if isinstance(hashes, dict) else None
        if isinstance(filename, str) and isinstance(url, str):
            links.append(
                WheelLink(
                    filename,
                    redact(urljoin(page_url, url).partition("#")[0]),
                    sha256.lower() if isinstance(sha256, str) and sha256 else None,
                    size if type(size) is int else None,
                )
            )
    return links


def _links_from_html(page_url: str, text: str) -> list[WheelLink]:
    """The anchors of a PEP 503 project page (or find-links page), with ``#sha256=`` hashes."""
    links = []
    for href in _HREF.findall(text):
        url, _, fragment = urljoin(page_url, html.unescape(href)).partition("#")
        sha256 = None
        for part in fragment.split("&"):
            algo, _, value = part.partition("=")
            sha256 = value.lower() if algo == "sha256" else sha256
        filename = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
        links.append(WheelLink(filename, redact(url), sha256))
    return links


def _read_remote_page(client: httpx.Client, page_url: str) -> list[WheelLink] | None:
    """The links of a remote page, None if the index has no such project (404)."""
    parts = httpx.URL(page_url)  # its username and password come percent-decoded
    auth = (parts.username, parts.password) if parts.username else None
    clean = redact(page_url)
    with get(client, clean, {"Accept": _ACCEPT}, auth) as response:
        if response.status_code == 404:
            return None
        if response.status_code != 200:
            raise PullError(f"{clean} answered HTTP {response.status_code}")
        body = bytearray()
        try:
            for chunk in response.iter_bytes():
                body += chunk
                if len(body) > MAX_PAGE_BYTES:
                    raise PullError(f"{clean}: index page larger than {MAX_PAGE_BYTES} bytes")
        except httpx.HTTPError as e:
            raise PullError(f"cannot read {clean}: {e}") from None
        final = response.url
        kind = response.headers.get("content-type", "").split(";")[0].strip().lower()
    text = body.decode("utf-8", errors="replace")
    is_json = kind in (PEP691_JSON, "application/json")
    links = (_links_from_json if is_json else _links_from_html)(str(final), text)
    if auth is None:
        return links
    # the index's credentials go with a link only to the index's own origin
    return [replace(x, auth=auth) if _origin(x.url) == _origin(clean) else x for x in links]


def _origin(url: str) -> tuple[str, str, int | None]:
    parsed = httpx.URL(url)
    return parsed.scheme, parsed.host, parsed.port


def local_path(url: str) -> Path:
    return Path(url2pathname(urlsplit(url).path))


def _read_local_page(url: str, filename: str, is_find_links: bool) -> list[WheelLink]:
    """A find-links folder holds wheels; a ``file://`` index holds PEP 503 pages."""
    path = local_path(url)
    if is_find_links and path.is_dir():
        wheel = path / filename
        return [WheelLink(filename, wheel.as_uri())] if wheel.is_file() else []
    if path.is_dir():
        path = path / "index.html"
    if not path.is_file() or path.stat().st_size > MAX_PAGE_BYTES:
        return []
    return _links_from_html(path.as_uri(), path.read_text(encoding="utf-8", errors="replace"))


def _project_pages(project: str, config: IndexConfig) -> Iterator[tuple[str, bool]]:
    """(page URL, is the page a find-links location) in search order."""
    for index in config.index_urls:
        yield index.rstrip("/") + "/" + canonicalize_name(project) + "/", False
    for location in config.find_links:
        yield (location if "://" in location else Path(location).absolute().as_uri()), True


def _same_wheel(a: str, b: str) -> bool:
    """Two wheel file names that name one wheel (project name normalised, as in packaging)."""
    if a == b:
        return True
    try:
        return parse_wheel_filename(a) == parse_wheel_filename(b)
    except InvalidWheelFilename:
        return False


def find_wheel(
    pin: WheelPin, config: IndexConfig, client: httpx.Client
) -> tuple[WheelLink, list[str]]:
    """The first listing of ``pin.filename`` whose declared hash and size agree with the pin,
    and notes on the places skipped. PullError when no index has it."""
    notes: list[str] = []
    for page_url, is_find_links in _project_pages(pin.project, config):
        where = redact(page_url)
        local = urlsplit(page_url).scheme == "file"
        try:
            if local:
                links = _read_local_page(page_url, pin.filename, is_find_links)
            else:
                links = _read_remote_page(client, page_url) or []
        except PullError as e:
            notes.append(str(e))
            continue
        for link in links:
            if not _same_wheel(link.filename, pin.filename):
                continue
            if link.sha256 is not None and link.sha256 != pin.sha256:
                notes.append(
                    f"{where} lists {pin.filename} with sha256 {link.sha256}, "
                    f"not the pinned {pin.sha256}"
                )
            elif link.size is not None and link.size != pin.size:
                notes.append(
                    f"{where} lists {pin.filename} with size {link.size}, not the pinned {pin.size}"
                )
            elif urlsplit(link.url).scheme == "file" and not local:
                notes.append(f"{where} points at a local file; ignored")
            else:
                return link, notes
        notes.append(f"{where}: no {pin.filename}")
    raise PullError(
        f"wheel {pin.filename} not found in the configured package indexes"
        + (": " + "; ".join(notes) if notes else "")
    )
