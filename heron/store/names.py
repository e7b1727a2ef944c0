"""Model names: ``[host/][namespace/]model[:tag]`` under a strict grammar.

A name is untrusted input (it arrives in HTTP bodies and on the command line), and the store keeps
manifests at ``manifests/<host>/<namespace>/<model>/<tag>``. So a name is parsed into validated
components, lower-cased, and only those components ever become path parts, through
``ModelName.manifest_relpath()``. Anything that could step out of the store (``..``, ``.``,
absolute paths, backslashes, NUL, percent-escapes, extra slashes) fails the grammar.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_NAMESPACE",
    "DEFAULT_TAG",
    "MAX_NAME_CHARS",
    "InvalidNameError",
    "ModelName",
    "parse_name",
]

DEFAULT_HOST = "registry.heron.local"  # stored manifests of local and catalog models
DEFAULT_NAMESPACE = "library"
DEFAULT_TAG = "latest"
# host (253 + ":" + 5) + 3 parts of 80 + separators, rounded up: longer input is refused before
# any regex runs, and error messages never echo more than a prefix of it.
MAX_NAME_CHARS = 512

_PART_RE = re.compile(r"[a-z0-9_][a-z0-9_.-]{0,79}")
_HOST_RE = re.compile(r"[a-z0-9][a-z0-9.-]{0,252}(?::[0-9]{1,5})?")


class InvalidNameError(ValueError):
    """A model name does not follow ``[host/][namespace/]model[:tag]``."""


def _shown(text: str) -> str:
    return repr(text if len(text) <= 64 else text[:64] + "...")


def _check_part(value: str, what: str, name: str) -> None:
    if not isinstance(value, str) or _PART_RE.fullmatch(value) is None:
        raise InvalidNameError(
            f"invalid model name {_shown(name)}: {what} {_shown(str(value))} must match "
            "[a-z0-9_][a-z0-9_.-]* (at most 80 characters)"
        )


def _check_host(value: str, name: str) -> None:
    if not isinstance(value, str) or _HOST_RE.fullmatch(value) is None:
        raise InvalidNameError(
            f"invalid model name {_shown(name)}: host {_shown(str(value))} must be a hostname "
            "with an optional :port"
        )
    if ":" in value and int(value.rsplit(":", 1)[1]) > 65535:
        raise InvalidNameError(f"invalid model name {_shown(name)}: port out of range")


def _validate(host: str, namespace: str, model: str, tag: str, text: str | None) -> None:
    name = text if text is not None else f"{host}/{namespace}/{model}:{tag}"
    _check_host(host, name)
    _check_part(namespace, "namespace", name)
    _check_part(model, "model", name)
    _check_part(tag, "tag", name)


@dataclass(frozen=True, slots=True)
class ModelName:
    """A validated, lower-case model name. Construct with ``parse_name``; direct construction
    validates each component too."""

    host: str
    namespace: str
    model: str
    tag: str

    def __post_init__(self) -> None:
        _validate(self.host, self.namespace, self.model, self.tag, None)

    @property
    def display(self) -> str:
        """The shortest name that parses back to this one: ``smollm2:latest``, ``ns/m:tag``,
        ``hf.co/org/repo:q4_k_m``."""
        if self.host != DEFAULT_HOST:
            return f"{self.host}/{self.namespace}/{self.model}:{self.tag}"
        if self.namespace != DEFAULT_NAMESPACE:
            return f"{self.namespace}/{self.model}:{self.tag}"
        return f"{self.model}:{self.tag}"

    def manifest_relpath(self) -> tuple[str, str, str, str]:
        """``(host, namespace, model, tag)``, re-validated: the only way a name becomes a path."""
        _validate(self.host, self.namespace, self.model, self.tag, None)
        return (self.host, self.namespace, self.model, self.tag)

    def __str__(self) -> str:
        return self.display


def parse_name(text: str, default_host: str = DEFAULT_HOST) -> ModelName:
    """Parse ``[host/][namespace/]model[:tag]``, case-insensitively (the result is lower-case).

    One part is a model, two are ``namespace/model``, three are ``host/namespace/model``. Raises
    ``InvalidNameError`` for anything else. ``default_host`` is used when no host is given
    (the Ollama importer passes Ollama's registry host).
    """
    if not isinstance(text, str):
        raise InvalidNameError(f"model name must be a string, got {type(text).__name__}")
    if not text:
        raise InvalidNameError("model name is empty")
    if len(text) > MAX_NAME_CHARS:
        raise InvalidNameError(
            f"invalid model name {_shown(text)}: longer than {MAX_NAME_CHARS} characters"
        )
    if "\x00" in text or "\\" in text:
        raise InvalidNameError(f"invalid model name {_shown(text)}: NUL or backslash")
    lowered = text.lower()
    parts = lowered.split("/")
    if len(parts) > 3:
        raise InvalidNameError(
            f"invalid model name {_shown(text)}: at most host/namespace/model[:tag]"
        )
    if any(not p for p in parts):
        raise InvalidNameError(f"invalid model name {_shown(text)}: empty part or absolute path")
    last = parts[-1]
    if last.count(":") > 1:
        raise InvalidNameError(f"invalid model name {_shown(text)}: more than one ':'")
    model, _, tag = last.partition(":")
    if ":" in last and not tag:
        raise InvalidNameError(f"invalid model name {_shown(text)}: empty tag")
    host, namespace = default_host, DEFAULT_NAMESPACE
    if len(parts) == 3:
        host, namespace = parts[0], parts[1]
    elif len(parts) == 2:
        namespace = parts[0]
    tag = tag or DEFAULT_TAG
    _validate(host, namespace, model, tag, text)
    return ModelName(host, namespace, model, tag)
