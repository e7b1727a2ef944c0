"""Every environment variable Heron reads, typed, in one place. All start with ``HERON_``."""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11434  # Ollama's port, so that existing Ollama clients work unchanged


def _get(name: str) -> str | None:
    value = os.environ.get(name)
    return value if value else None


def host() -> str:
    """``HERON_HOST``: ``host``, ``host:port`` or ``http://host:port``."""
    return _get("HERON_HOST") or DEFAULT_HOST


def models_dir() -> Path:
    """``HERON_MODELS``: root of the model store; default ``~/.heron/models`` (``~`` expanded)."""
    return Path(os.path.expanduser(_get("HERON_MODELS") or "~/.heron/models"))


def cache_dir() -> Path:
    """``HERON_CACHE``: built kernels and benchmark peers; default ``~/.cache/heron``."""
    return Path(os.path.expanduser(_get("HERON_CACHE") or "~/.cache/heron"))


def kernels_enabled() -> bool:
    """``HERON_KERNELS``: ``0`` keeps Heron's C++ CPU kernels off (torch ops only)."""
    return _get("HERON_KERNELS") != "0"


def api_key() -> str | None:
    """``HERON_API_KEY``: the key every route but /health requires, if set."""
    return _get("HERON_API_KEY")


def adaptive_threads() -> bool:
    """``HERON_ADAPTIVE_THREADS``: ``0`` keeps the engine's thread count fixed instead of
    following the cores other processes leave free (``heron.engine.threads``)."""
    return _get("HERON_ADAPTIVE_THREADS") != "0"


def weight_cache_enabled() -> bool:
    """``HERON_WEIGHT_CACHE``: ``0`` prepares a model's weights from its file on every load
    instead of mapping the copy prepared the first time (``heron.runner.weight_cache``)."""
    return _get("HERON_WEIGHT_CACHE") != "0"


def fault_inject_step() -> int | None:
    """``HERON_FAULT_INJECT_STEP``: testing only. The engine core raises at that step number,
    so tests can check that a mid-stream engine error ends streams cleanly."""
    value = _get("HERON_FAULT_INJECT_STEP")
    return int(value) if value is not None else None


def split_host_port(value: str, default_port: int = DEFAULT_PORT) -> tuple[str, int]:
    """Parse ``[scheme://]host[:port]``; IPv6 hosts go in brackets."""
    value = value.split("://", 1)[-1].rstrip("/")
    if value.startswith("["):
        end = value.index("]")
        host_part, rest = value[1:end], value[end + 1 :]
        port = int(rest[1:]) if rest.startswith(":") else default_port
        return host_part, port
    if value.count(":") == 1:
        h, p = value.split(":")
        return h or DEFAULT_HOST, int(p)
    return value, default_port


def pypi_index_url() -> str | None:
    """``HERON_PYPI_INDEX_URL``: package index URL(s), space-separated, that catalog pulls use
    instead of pip's configured indexes and find-links."""
    return _get("HERON_PYPI_INDEX_URL")


def is_loopback_host(host: str) -> bool:
    """``localhost`` or a loopback IP address (IPv6 may come in brackets)."""
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
