"""Test support for pulls (no tests here): synthetic wheels and a local package index.

``IndexServer`` is a threaded HTTP server on 127.0.0.1 serving PEP 691 JSON (when asked for it
and ``json`` is on) or PEP 503 HTML project pages under ``/simple/<project>/`` and wheels under
``/files/<name>``, with ``Range`` support, one-shot connection drops, redirects and a record of
every request's path and headers.
"""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import json
import threading
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from heron.store.catalog import Catalog, CatalogEntry, CatalogLayer, Part, WheelPin
from heron.store.manifest import MEDIA_LICENSE, MEDIA_MODEL


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def build_wheel(
    dist: str,
    version: str,
    members: dict[str, bytes],
    record_overrides: dict[str, str] | None = None,
) -> tuple[str, bytes]:
    """A wheel (file name, bytes) holding ``members`` plus METADATA, WHEEL and RECORD.
    ``record_overrides`` replaces RECORD lines (``path -> "hash,size"``)."""
    dist_info = f"{dist}-{version}.dist-info"
    files = dict(members)
    files[f"{dist_info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {dist}\nVersion: {version}\n".encode()
    )
    files[f"{dist_info}/WHEEL"] = b"Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    lines = []
    for path, data in files.items():
        value = (record_overrides or {}).get(path, f"{record_hash(data)},{len(data)}")
        lines.append(f"{path},{value}")
    lines.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(lines) + "\n").encode()
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for path, data in files.items():
            zf.writestr(path, data)
    return f"{dist}-{version}-py3-none-any.whl", buf.getvalue()


@dataclass
class FakeModel:
    """A catalog entry for one synthetic wheel: a ``model.gguf`` and a LICENSE."""

    project: str
    filename: str
    wheel: bytes
    gguf: bytes
    license: bytes
    pin: WheelPin
    entry: CatalogEntry

    @property
    def catalog(self) -> Catalog:
        return Catalog([self.entry])


def fake_model(
    model: str = "tiny",
    gguf: bytes | None = None,
    *,
    record_overrides: dict[str, str] | None = None,
    pin_sha256: str | None = None,
    size: int = 300_000,
) -> FakeModel:
    dist = f"heron_test_{model.replace('-', '_')}"
    gguf = gguf if gguf is not None else b"GGUF" + bytes(range(256)) * (size // 256)
    license_text = b"Test licence: do what you like.\n"
    members = {f"{dist}/model.gguf": gguf, f"{dist}/LICENSE": license_text}
    overrides = {f"{dist}/{k}": v for k, v in (record_overrides or {}).items()}
    filename, wheel = build_wheel(dist, "1.0", members, overrides)
    pin = WheelPin(dist.replace("_", "-"), filename, pin_sha256 or sha256(wheel), len(wheel))
    entry = CatalogEntry(
        model=model,
        tags=("latest", "1b"),
        format="gguf",
        family="llama",
        layers=(
            CatalogLayer(MEDIA_MODEL, sha256(gguf), len(gguf), (Part(pin, f"{dist}/model.gguf"),)),
            CatalogLayer(
                MEDIA_LICENSE,
                sha256(license_text),
                len(license_text),
                (Part(pin, f"{dist}/LICENSE"),),
            ),
        ),
    )
    return FakeModel(pin.project, filename, wheel, gguf, license_text, pin, entry)


@dataclass
class ServerState:
    projects: dict[str, list[str]] = field(default_factory=dict)  # normalised -> file names
    files: dict[str, bytes] = field(default_factory=dict)
    hashes: dict[str, str] = field(default_factory=dict)  # file name -> declared sha256
    sizes: dict[str, int] = field(default_factory=dict)  # file name -> declared size (JSON)
    json: bool = True
    drop_once: set[str] = field(default_factory=set)  # file names: send half, then hang up
    redirects: dict[str, str] = field(default_factory=dict)  # path -> Location
    file_base: str | None = None  # absolute base URL for wheel links (default: relative)
    extra_bytes: dict[str, bytes] = field(default_factory=dict)  # appended, no Content-Length
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, project: str, filename: str, data: bytes, *, declare_hash: bool = True) -> None:
        self.projects.setdefault(project, []).append(filename)
        self.files[filename] = data
        if declare_hash:
            self.hashes[filename] = sha256(data)

    def file_gets(self, filename: str) -> list[dict[str, str]]:
        with self.lock:
            return [h for m, p, h in self.requests if m == "GET" and p == f"/files/{filename}"]


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: ServerState

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _send(self, status: int, body: bytes, ctype: str, headers: dict[str, str] | None = None):
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def do_GET(self) -> None:
        state = self.state
        with state.lock:
            state.requests.append(
                ("GET", self.path, {k.lower(): v for k, v in self.headers.items()})
            )
        if self.path in state.redirects:
            self._send(302, b"", "text/plain", {"Location": state.redirects[self.path]})
        elif self.path.startswith("/simple/"):
            self._project_page(self.path[len("/simple/") :].strip("/"))
        elif self.path.startswith("/files/"):
            self._file(self.path[len("/files/") :])
        else:
            self._send(404, b"not found", "text/plain")

    def _link(self, filename: str) -> str:
        base = self.state.file_base
        return f"{base}/files/{filename}" if base else f"../../files/{filename}"

    def _project_page(self, project: str) -> None:
        state = self.state
        if project not in state.projects:
            self._send(404, b"not found", "text/plain")
            return
        names = state.projects[project]
        if state.json and "application/vnd.pypi.simple.v1+json" in self.headers.get("Accept", ""):
            files = []
            for n in names:
                entry: dict[str, Any] = {"filename": n, "url": self._link(n), "hashes": {}}
                if n in state.hashes:
                    entry["hashes"]["sha256"] = state.hashes[n]
                if n in state.sizes:
                    entry["size"] = state.sizes[n]
                files.append(entry)
            body = json.dumps({"meta": {"api-version": "1.1"}, "name": project, "files": files})
            self._send(200, body.encode(), "application/vnd.pypi.simple.v1+json")
            return
        anchors = []
        for n in names:
            frag = f"#sha256={state.hashes[n]}" if n in state.hashes else ""
            anchors.append(f'<a href="{self._link(n)}{frag}">{n}</a><br/>')
        html = "<!DOCTYPE html><html><body>" + "".join(anchors) + "</body></html>"
        self._send(200, html.encode(), "text/html")

    def _file(self, filename: str) -> None:
        state = self.state
        data = state.files.get(filename)
        if data is None:
            self._send(404, b"not found", "text/plain")
            return
        if filename in state.extra_bytes:  # a body longer than declared, with no length
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data + state.extra_bytes[filename])
            self.close_connection = True
            return
        start = 0
        rng = self.headers.get("Range")
        if rng and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[len("bytes=") : -1])
        body = data[start:]
        self.send_response(206 if start else 200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.end_headers()
        with state.lock:
            drop = filename in state.drop_once
            state.drop_once.discard(filename)
        if drop:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self.wfile.write(body)


@contextmanager
def serve(state: ServerState) -> Iterator[str]:
    """Run an index server for ``state``; yields its base URL ``http://127.0.0.1:<port>``."""
    handler = type("Handler", (_Handler,), {"state": state})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
