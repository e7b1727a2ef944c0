"""Ollama's model-management routes over Heron's store: ``/api/pull``, ``/api/create``,
``/api/copy``, ``/api/delete`` and ``HEAD|POST /api/blobs/:digest``.

Store work (hashing, downloads, renames) runs in threads; progress crosses back to the event
loop through a queue and streams as NDJSON status lines, as Ollama sends them. A client that
disconnects does not stop a pull: its bytes stay in the store's partial file, and the next
pull resumes from them. Blob uploads are coordinated per digest (see ``blob_upload``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse
from starlette.requests import ClientDisconnect

from heron.server.common import APIError, ndjson
from heron.server.ollama.protocol import CopyRequest, CreateRequest, DeleteRequest, PullRequest
from heron.server.state import ServerState
from heron.store.blobs import BlobBusyError, BlobWriter
from heron.store.create import check_modelfile_template
from heron.store.files import DigestError, DigestMismatchError, SizeMismatchError, parse_digest
from heron.store.modelfile import Modelfile, ModelfileError, coerce_parameter
from heron.store.names import InvalidNameError, parse_name
from heron.store.store import ModelNotFoundError, ModelStore

logger = logging.getLogger(__name__)

Progress = Callable[[dict[str, Any]], None]
_END = object()

UPLOAD_IDLE_SECONDS = 10.0  # an upload that sends nothing for this long is dropped (408)
UPLOAD_WAIT_SECONDS = 20.0  # how long a second upload of a digest waits for the first (409)
_LOCK_POLL_SECONDS = 0.2
# Uploads in progress in this process, by (blob directory, digest); set when each ends.
_uploads: dict[tuple[str, str], asyncio.Event] = {}


def _store(state: ServerState) -> ModelStore:
    if state.models.store is None:
        raise APIError(400, "this server has no model store")
    return state.models.store


def _client_error(exc: BaseException) -> str | None:
    """The message of an error the client caused (bad name, digest, Modelfile, unknown
    model); None for anything else."""
    if isinstance(exc, ModelNotFoundError):
        return str(exc.args[0]) if exc.args else "model not found"
    if isinstance(exc, ValueError):
        return str(exc)
    return None


async def _in_thread(work: Callable[[Progress], None]) -> AsyncIterator[dict[str, Any]]:
    """Run ``work(progress)`` in a thread and yield each progress dict as it comes; an error
    becomes a final ``{"error": ...}`` item."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[Any] = asyncio.Queue()

    def put(item: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed (server stopping)
            loop.call_soon_threadsafe(queue.put_nowait, item)

    def run() -> None:
        try:
            work(put)
        except Exception as exc:
            message = _client_error(exc)
            if message is None:
                logger.exception("model management failed")
                message = f"internal error: {type(exc).__name__}"
            put({"error": message})
        finally:
            put(_END)

    threading.Thread(target=run, name="heron-store", daemon=True).start()
    while (item := await queue.get()) is not _END:
        yield item


async def _respond(items: AsyncIterator[dict[str, Any]], stream: bool) -> Response:
    """NDJSON status lines, or (``stream: false``) the last status as one object; an error
    without streaming is a 400 (404 for an unknown model) in Ollama's shape."""
    if stream:
        return StreamingResponse(
            (ndjson(item) async for item in items), media_type="application/x-ndjson"
        )
    last: dict[str, Any] = {}
    async for item in items:
        last = item
        if "error" in item:
            status = 404 if "not found" in str(item["error"]) else 400
            raise APIError(status, str(item["error"]))
    return JSONResponse(last)


# -------------------------------------------------------------------------------- pull
async def pull(state: ServerState, req: PullRequest) -> Response:
    store = _store(state)
    name = req.model or req.name
    _check_name(name, "model")
    if req.insecure:
        raise APIError(400, "insecure pulls are not supported: Heron pulls over HTTPS only")

    def work(progress: Progress) -> None:
        from heron.store.pull import pull as pull_model

        pull_model(store, name, progress)

    return await _respond(_in_thread(work), req.stream is not False)


# ------------------------------------------------------------------------------ create
def _modelfile(req: CreateRequest) -> Modelfile:
    """Ollama's create request as a Modelfile (the CLI parsed the text and uploaded files;
    an ADAPTER's files come as ``adapters``, by digest)."""
    if req.quantize:
        raise APIError(400, f"quantize {req.quantize!r} is not supported: import a quantized GGUF")
    if not req.from_ and not req.files:
        raise APIError(400, "neither 'from' nor 'files' was specified")
    params: list[tuple[str, Any]] = []
    for key, value in (req.parameters or {}).items():
        for v in value if isinstance(value, list) else [value]:
            text = ("true" if v else "false") if isinstance(v, bool) else str(v)
            try:
                params.append((key, coerce_parameter(key, text)))
            except ModelfileError as exc:
                raise APIError(400, str(exc), param=f"parameters.{key}") from None
    license_ = [req.license] if isinstance(req.license, str) else list(req.license or [])
    messages = [{"role": m.role, "content": m.content} for m in req.messages or []]
    return Modelfile(
        from_=req.from_ or "",
        parameters=params,
        template=req.template,
        system=req.system,
        license=license_,
        messages=messages,
    )


async def create(state: ServerState, req: CreateRequest) -> Response:
    store = _store(state)
    name = req.model or req.name
    _check_name(name, "model")
    modelfile = _modelfile(req)
    files = dict(req.files or {})
    adapters = dict(req.adapters or {})
    for filename, digest in [*files.items(), *adapters.items()]:
        try:
            parse_digest(digest)
        except DigestError as exc:
            where = "files" if filename in files else "adapters"
            raise APIError(400, f"{where}.{filename}: {exc}", param=where) from None
    if modelfile.template is not None:
        try:
            await asyncio.to_thread(check_modelfile_template, modelfile.template)
        except ModelfileError as exc:
            raise APIError(400, str(exc), param="template") from None

    def work(progress: Progress) -> None:
        statuses: Iterator[dict[str, Any]] = store.create(
            name, modelfile, files=files or None, adapters=adapters or None
        )
        for status in statuses:
            progress(status)

    return await _respond(_in_thread(work), req.stream is not False)


# ------------------------------------------------------------------------ copy, delete
async def copy(state: ServerState, req: CopyRequest) -> Response:
    store = _store(state)
    _check_name(req.source, "source")
    _check_name(req.destination, "destination")
    try:
        await asyncio.to_thread(store.copy, req.source, req.destination)
    except ModelNotFoundError:
        raise APIError(404, f"model '{req.source}' not found", "not_found") from None
    return Response(status_code=200)


async def delete(state: ServerState, req: DeleteRequest) -> Response:
    store = _store(state)
    name = req.model or req.name
    _check_name(name, "model")
    with contextlib.suppress(APIError):
        await state.models.unload(name)  # its blobs are about to go
    try:
        await asyncio.to_thread(store.delete, name)
    except ModelNotFoundError:
        raise APIError(404, f"model '{name}' not found", "not_found") from None
    return Response(status_code=200)


# ------------------------------------------------------------------------------- blobs
async def blob_exists(state: ServerState, digest: str) -> Response:
    store = _store(state)
    digest = _check_digest(digest)
    found = await asyncio.to_thread(store.blobs.has, digest)
    return Response(status_code=200 if found else 404)


async def blob_upload(state: ServerState, digest: str, request: Request) -> Response:
    """Hash the body to disk as it arrives; store it only if it matches ``digest``.

    One upload per digest at a time: a second one waits up to ``UPLOAD_WAIT_SECONDS`` for the
    first (201 at once if that stored the blob), then gets 409 with ``Retry-After``. An
    upload that sends nothing for ``UPLOAD_IDLE_SECONDS``, or whose client goes away, is
    dropped with its partial file. No thread ever waits on the digest's file lock: it is
    tried without blocking, and the event loop polls.
    """
    store = _store(state)
    digest = _check_digest(digest)
    key = (str(store.blobs.root), digest)
    deadline = time.monotonic() + UPLOAD_WAIT_SECONDS
    while (running := _uploads.get(key)) is not None:  # another upload here: wait for it
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(running.wait(), max(deadline - time.monotonic(), 0))
        if not running.is_set():
            raise _busy(digest)
    finished = _uploads[key] = asyncio.Event()
    try:
        writer = await _open_writer(store, digest, deadline)
        if writer is None:
            return Response(status_code=201)  # stored already (or by the upload we waited on)
        try:
            stream = request.stream().__aiter__()
            while True:
                try:
                    chunk = await asyncio.wait_for(anext(stream), UPLOAD_IDLE_SECONDS)
                except StopAsyncIteration:
                    break
                except TimeoutError:
                    raise APIError(
                        408, f"upload stalled: no data for {UPLOAD_IDLE_SECONDS:g} s"
                    ) from None
                if chunk:
                    await asyncio.to_thread(writer.write, chunk)
            await asyncio.to_thread(writer.commit)
        except (DigestMismatchError, SizeMismatchError) as exc:
            raise APIError(400, f"digest mismatch: {exc}", param="digest") from None
        except OSError as exc:
            raise APIError(507, f"cannot store the blob: {exc.strerror}", "server_error") from None
        except ClientDisconnect:
            raise APIError(499, "the client closed the connection mid-upload") from None
        finally:
            # No-op after a commit. Shielded: a client that left cancels this task, and the
            # partial file must go all the same.
            await asyncio.shield(asyncio.to_thread(writer.abort))
    finally:
        finished.set()
        if _uploads.get(key) is finished:
            del _uploads[key]
    return Response(status_code=201)


async def _open_writer(store: ModelStore, digest: str, deadline: float) -> BlobWriter | None:
    """The digest's writer, or None if the blob is stored already. Another process's writer
    of the same digest (a pull) is waited for until ``deadline`` by polling, then 409."""
    while True:
        try:
            writer = await asyncio.to_thread(store.blobs.writer, digest, wait=False)
        except BlobBusyError:
            if time.monotonic() >= deadline:
                raise _busy(digest) from None
            await asyncio.sleep(_LOCK_POLL_SECONDS)
            continue
        if writer.done:
            writer.abort()
            return None
        return writer


def _busy(digest: str) -> APIError:
    return APIError(
        409,
        f"another upload of {digest} is in progress; retry",
        headers={"Retry-After": str(int(UPLOAD_IDLE_SECONDS))},
    )


def _check_digest(digest: str) -> str:
    try:
        return parse_digest(digest)
    except DigestError as exc:
        raise APIError(400, str(exc), param="digest") from None


def _check_name(name: str, param: str) -> None:
    if not name:
        raise APIError(400, f"{param} is required", param=param)
    try:
        parse_name(name)
    except InvalidNameError as exc:
        raise APIError(400, f"invalid {param} name: {exc}", param=param) from None
