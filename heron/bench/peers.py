"""The peers that ``heron bench`` measures Heron against, installed on demand.

- ``llama-server``: llama.cpp's own server, the continuous-batching peer. Built with cmake from
  the llama.cpp sources vendored in the pinned ``llama-cpp-python`` sdist (sha256 checked).
- ``llama-cpp-python``: ``llama-cpp-python[server]`` in its own venv, the Ollama-style peer that
  serves one request at a time, first come first served.

Nothing is built at import. ``ensure_peer`` installs a peer the first time it is asked for::

    cache_dir()/                                  $HERON_CACHE/peers or ~/.cache/heron/peers
      <kind>-<version>.lock                       flock held while building
      .<kind>-<version>.tmp-<pid>/                the build; deleted on failure, or by the next
                                                  builder if its process died
      <kind>-<version>.failed.log                 the last failed build's log
      <kind>-<version>/                           the tmp dir, renamed once the build passed a
        bin/llama-server | venv/bin/python        run check: its existence means a complete install
        peer.json, build.log                      provenance (sdist sha256, llama.cpp commit)
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx

from heron import env
from heron.bench.ggml_flags import ggml_isa_args

PEER_KINDS = ("llama-server", "llama-cpp-python")

LLAMA_CPP_PYTHON_VERSION = "0.3.36"
# sha256 of llama_cpp_python-0.3.36.tar.gz as PyPI publishes it.
SDIST_SHA256 = "832db0699007f1be95a7e41ef12e88926b02ba836461e36a36372db2760c1a2e"
BUILD_JOBS = 2  # leaves a small machine usable while a peer compiles
LLAMA_CPP_PYTHON_N_CTX = 2048  # one sequence at a time, so one context serves every request

# Release, one static binary (so the install survives being renamed), and no network during
# the build: no HTTPS client, no prebuilt web UI download. The ISA flags come from
# ``ggml_isa_args`` at build time.
# fmt: off
LLAMA_SERVER_CMAKE_ARGS = (
    "-DCMAKE_BUILD_TYPE=Release", "-DBUILD_SHARED_LIBS=OFF",
    "-DLLAMA_BUILD_TESTS=OFF", "-DLLAMA_BUILD_EXAMPLES=OFF", "-DLLAMA_BUILD_APP=OFF",
    "-DLLAMA_BUILD_UI=OFF", "-DLLAMA_USE_PREBUILT_UI=OFF", "-DLLAMA_OPENSSL=OFF",
)
# fmt: on
# Read by the llama-cpp-python build backend. The multimodal library is not needed for text.
LLAMA_CPP_PYTHON_CMAKE_ARGS = "-DLLAVA_BUILD=OFF"
_EXECUTABLES = {
    "llama-server": Path("bin/llama-server"),
    "llama-cpp-python": Path("venv/bin/python"),
}
_CHECK_ARGS = {
    "llama-server": ["--version"],
    "llama-cpp-python": ["-c", "import llama_cpp.server.app"],
}
_READY_PATHS = {"llama-server": "/health", "llama-cpp-python": "/v1/models"}
# make's "[ 37%]" or ninja's "[48/140]", which pip indents
_BUILD_STEP = re.compile(r"^\s*\[\s*(\d+)(?:%|/(\d+))\]")

Progress = Callable[[str], None]


class PeerError(RuntimeError):
    """A peer could not be installed or started; the message carries the relevant log tail."""


@dataclass(slots=True)
class PeerSpec:
    """What to serve and how: ``parallel`` slots (llama-server ``-np``) of ``ctx_per_slot`` tokens
    each. llama-cpp-python ignores both and serves one request at a time."""

    kind: str
    model_path: Path
    parallel: int = 1
    ctx_per_slot: int = 1024
    threads: int | None = None  # default: os.cpu_count()

    def __post_init__(self) -> None:
        _check_kind(self.kind)
        if self.parallel < 1 or self.ctx_per_slot < 1:
            raise ValueError("parallel and ctx_per_slot must be at least 1")
        if self.threads is not None and self.threads < 1:
            raise ValueError("threads must be at least 1")
        self.model_path = Path(self.model_path)


def cache_dir() -> Path:
    """``$HERON_CACHE/peers``, or ``~/.cache/heron/peers`` when HERON_CACHE is unset."""
    return env.cache_dir() / "peers"


def peer_dir(kind: str) -> Path:
    """Where the installed peer of ``kind`` lives (complete whenever it exists)."""
    _check_kind(kind)
    return cache_dir() / f"{kind}-{LLAMA_CPP_PYTHON_VERSION}"


def peer_executable(kind: str) -> Path:
    """The executable ``ensure_peer(kind)`` returns; it exists only once the peer is installed."""
    return peer_dir(kind) / _EXECUTABLES[kind]


def ensure_peer(kind: str, progress: Progress | None = None) -> Path:
    """Install or build the peer into the cache on first use and return its executable: the
    llama-server binary, or the python of llama-cpp-python's venv. Idempotent and safe when
    several processes ask at once (one builds, the others wait on the lock). A failed or killed
    build leaves nothing behind that a later call would take for an install."""
    build = _build_llama_server if kind == "llama-server" else _build_llama_cpp_python

    def check(executable: Path) -> None:
        _run([str(executable), *_CHECK_ARGS[kind]], Path(os.devnull))

    return install_atomically(peer_dir(kind), _EXECUTABLES[kind], build, check, progress)


def install_atomically(
    final: Path,
    executable: Path,
    build: Callable[[Path, Progress], None],
    check: Callable[[Path], None],
    progress: Progress | None = None,
) -> Path:
    """Return ``final / executable``, first running ``build(tmp, progress)`` then
    ``check(tmp / executable)`` in a temp dir next to ``final`` and renaming it to ``final``,
    unless that is already there. Builders of the same ``final`` are serialised by a flock.
    If the build fails, its ``build.log`` is kept as ``<final>.failed.log``."""
    report = progress or (lambda _msg: None)
    target = final / executable
    if target.exists():
        return target
    final.parent.mkdir(parents=True, exist_ok=True)
    with _locked(final.parent / f"{final.name}.lock", final.name, report):
        if target.exists():  # another process finished while we waited
            return target
        for stale in final.parent.glob(f".{final.name}.tmp-*"):
            shutil.rmtree(stale, ignore_errors=True)  # its builder died: we hold the lock
        if final.exists():  # not ours and incomplete: never renamed from a checked build
            shutil.rmtree(final)
        tmp = final.parent / f".{final.name}.tmp-{os.getpid()}"
        tmp.mkdir()
        try:
            build(tmp, report)
            report("checking the build")
            check(tmp / executable)
            os.rename(tmp, final)
        except BaseException as exc:
            kept = final.parent / f"{final.name}.failed.log"
            if (tmp / "build.log").exists():
                os.replace(tmp / "build.log", kept)
            shutil.rmtree(tmp, ignore_errors=True)
            if isinstance(exc, PeerError) and kept.exists():
                raise PeerError(f"{exc}\nfull log: {kept}") from exc
            raise
    report(f"{final.name} installed in {final}")
    return target


@contextlib.contextmanager
def _locked(path: Path, name: str, report: Progress) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            report(f"waiting for another process that is installing {name}")
            fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock; the lock file stays, so its inode never changes


def _build_llama_server(dest: Path, report: Progress) -> None:
    sdist = _download_sdist(dest / "download", report)
    src, build = dest / "src", dest / "build"
    report("extracting vendor/llama.cpp")
    _extract_llama_cpp(sdist, src)
    report("cmake configure")
    cmake_args = [*LLAMA_SERVER_CMAKE_ARGS, *ggml_isa_args()]
    _run(["cmake", "-S", str(src), "-B", str(build), *cmake_args], dest / "build.log")
    report("building 0%")
    _run(
        ["cmake", "--build", str(build), "--target", "llama-server", "-j", str(BUILD_JOBS)],
        dest / "build.log",
        on_line=_percent_reporter(report),
    )
    (dest / "bin").mkdir()
    shutil.copy2(build / "bin" / "llama-server", dest / "bin" / "llama-server")
    shutil.copy2(src / "LICENSE", dest / "LICENSE")
    _write_provenance(dest, sdist, {"cmake_args": cmake_args})
    for tree in (src, build, dest / "download"):
        shutil.rmtree(tree)


def _build_llama_cpp_python(dest: Path, report: Progress) -> None:
    sdist = _download_sdist(dest / "download", report)
    report("creating venv")
    _run([sys.executable, "-m", "venv", str(dest / "venv")], dest / "build.log")
    report("pip install llama-cpp-python[server] (compiles llama.cpp): 0%")
    cmake_args = " ".join([LLAMA_CPP_PYTHON_CMAKE_ARGS, *ggml_isa_args()])
    build_env = dict(os.environ)
    build_env.update(CMAKE_ARGS=cmake_args, CMAKE_BUILD_PARALLEL_LEVEL=str(BUILD_JOBS))
    # The verified sdist, by path; the extras' dependencies come from the index. No wheel cache:
    # a cached wheel would ignore CMAKE_ARGS.
    requirement = f"llama-cpp-python[server] @ {sdist.as_uri()}"
    python = dest / _EXECUTABLES["llama-cpp-python"]
    _run(
        [str(python), "-m", "pip", "install", "-v", "--no-cache-dir", requirement],
        dest / "build.log",
        env=build_env,
        on_line=_percent_reporter(report, "pip install llama-cpp-python[server]: "),
    )
    _write_provenance(dest, sdist, {"cmake_args": cmake_args})
    shutil.rmtree(dest / "download")


def _download_sdist(dest: Path, report: Progress) -> Path:
    report(f"downloading llama-cpp-python {LLAMA_CPP_PYTHON_VERSION} sdist")
    dest.mkdir(parents=True)
    requirement = f"llama-cpp-python=={LLAMA_CPP_PYTHON_VERSION}"
    _run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:"]
        + [requirement, "-d", str(dest)],
        dest.parent / "build.log",
    )
    sdist = dest / f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}.tar.gz"
    report("verifying sha256")
    with sdist.open("rb") as f:
        digest = hashlib.file_digest(f, "sha256")
    if digest.hexdigest() != SDIST_SHA256:
        raise PeerError(f"{sdist.name}: sha256 {digest.hexdigest()}, expected {SDIST_SHA256}")
    return sdist


def _extract_llama_cpp(sdist: Path, dest: Path) -> None:
    prefix = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/vendor/llama.cpp/"
    with tarfile.open(sdist) as tar:
        members = []
        for member in tar.getmembers():
            name = member.name[len(prefix) :]
            # .git points into the sdist's own repository, which is not extracted.
            if member.name.startswith(prefix) and name and name != ".git":
                member.name = name
                members.append(member)
        if not members:
            raise PeerError(f"{sdist.name} has no {prefix}")
        tar.extractall(dest, members=members, filter="data")


def _write_provenance(dest: Path, sdist: Path, extra: dict[str, object]) -> None:
    info = {"version": LLAMA_CPP_PYTHON_VERSION, "sdist_sha256": SDIST_SHA256, **extra}
    # The llama.cpp commit the sdist vendors, from the git metadata it ships.
    head = f"llama_cpp_python-{LLAMA_CPP_PYTHON_VERSION}/.git/modules/vendor/llama.cpp/HEAD"
    with tarfile.open(sdist) as tar, contextlib.suppress(KeyError):
        if (f := tar.extractfile(head)) is not None:
            info["llama_cpp_commit"] = f.read().decode().strip()
    (dest / "peer.json").write_text(json.dumps(info, indent=2) + "\n")


def _percent_reporter(report: Progress, label: str = "building ") -> Callable[[str], None]:
    last = 0  # the caller reported 0% already

    def on_line(line: str) -> None:
        nonlocal last
        if m := _BUILD_STEP.match(line):
            percent = int(m[1]) if m[2] is None else 100 * int(m[1]) // max(1, int(m[2]))
            if percent != last:
                last = percent
                report(f"{label}{percent}%")

    return on_line


def _run(
    argv: Sequence[str],
    log_path: Path,
    env: dict[str, str] | None = None,
    on_line: Callable[[str], None] | None = None,
) -> None:
    """Run ``argv`` to completion, appending its output to ``log_path``; PeerError with the
    output's tail if it fails."""
    tail: list[str] = []
    with log_path.open("a") as log:
        log.write(f"$ {' '.join(argv)}\n")
        # fmt: off
        with subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            env=env, text=True, errors="replace",
        ) as proc:
            # fmt: on
            assert proc.stdout is not None
            for line in proc.stdout:
                log.write(line)
                tail = [*tail[-39:], line.rstrip("\n")]
                if on_line is not None:
                    on_line(line)
    if proc.returncode != 0:
        output = "\n".join(tail)
        raise PeerError(f"{argv[0]} failed with exit code {proc.returncode}:\n{output}")


def peer_argv(spec: PeerSpec, executable: Path, port: int) -> list[str]:
    """The command line that serves ``spec`` on 127.0.0.1:``port``."""
    threads = str(spec.threads or os.cpu_count() or 1)
    # fmt: off
    if spec.kind == "llama-server":
        return [
            str(executable), "-m", str(spec.model_path), "--host", "127.0.0.1", "--port", str(port),
            "-np", str(spec.parallel), "-c", str(spec.parallel * spec.ctx_per_slot),
            "-t", threads, "-tb", threads, "--no-webui",
        ]
    return [
        str(executable), "-m", "llama_cpp.server", "--model", str(spec.model_path),
        "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(LLAMA_CPP_PYTHON_N_CTX),
        "--n_threads", threads, "--n_threads_batch", threads,
        # Queue requests instead of cancelling the running one when another arrives.
        "--interrupt_requests", "False",
    ]
    # fmt: on


class PeerProcess:
    """A running peer. Both peers serve the OpenAI API under ``base_url + "/v1"``. Use it as a
    context manager, or call ``stop()``; its log lives in a temp dir that ``stop()`` removes."""

    def __init__(self, spec: PeerSpec, argv: list[str], port: int) -> None:
        self.spec = spec
        self.argv = argv
        self.port = port
        self.base_url = f"http://127.0.0.1:{port}"
        self._log_dir = Path(tempfile.mkdtemp(prefix=f"heron-peer-{spec.kind}-"))
        self.log_path = self._log_dir / "peer.log"
        try:
            with self.log_path.open("wb") as log:
                self.proc = subprocess.Popen(
                    argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
                )
        except OSError as exc:
            shutil.rmtree(self._log_dir, ignore_errors=True)
            raise PeerError(f"cannot run {argv[0]}: {exc}") from exc

    def log_tail(self, num_lines: int = 40) -> str:
        """The last lines the peer wrote (stdout and stderr), or "" once stopped."""
        try:
            text = self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""
        return "\n".join(text.splitlines()[-num_lines:])

    def wait_ready(self, timeout: float) -> None:
        """Poll the peer until it answers 200; PeerError if it exits or ``timeout`` passes."""
        url = self.base_url + _READY_PATHS[self.spec.kind]
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as client:
            while self.proc.poll() is None and time.monotonic() < deadline:
                with contextlib.suppress(httpx.HTTPError):
                    if client.get(url).status_code == 200:
                        return
                time.sleep(0.1)
        if self.proc.poll() is not None:
            why = f"exited with code {self.proc.returncode} before it was ready"
        else:
            why = f"not ready after {timeout:.0f} s"
        raise PeerError(f"{self.spec.kind} {why}: {' '.join(self.argv)}\n{self.log_tail()}")

    def stop(self) -> None:
        """Terminate the peer (kill it if it lingers) and delete its log. Idempotent."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        shutil.rmtree(self._log_dir, ignore_errors=True)

    def __enter__(self) -> PeerProcess:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def start_peer(
    spec: PeerSpec,
    port: int | None = None,
    timeout: float = 300,
    *,
    executable: Path | None = None,
) -> PeerProcess:
    """Start the peer bound to 127.0.0.1 (on a free port unless ``port`` is given) and wait until
    it answers (/health for llama-server, /v1/models for llama-cpp-python). Installs the peer
    first if needed, unless ``executable`` names one to use instead. Raises PeerError with the
    peer's output tail on failure, after stopping it."""
    if not spec.model_path.is_file():
        raise PeerError(f"model file not found: {spec.model_path}")
    exe = executable if executable is not None else ensure_peer(spec.kind)
    port = port or free_port()
    peer = PeerProcess(spec, peer_argv(spec, exe, port), port)
    try:
        peer.wait_ready(timeout)
    except BaseException:
        peer.stop()
        raise
    return peer


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _check_kind(kind: str) -> None:
    if kind not in PEER_KINDS:
        raise ValueError(f"unknown peer {kind!r}; expected one of {PEER_KINDS}")
