"""Modelfiles: FROM, PARAMETER, TEMPLATE, SYSTEM, ADAPTER, LICENSE and MESSAGE.

Directives are case-insensitive, one per line; a line whose first non-blank character is ``#``
is a comment. A value is the rest of the line (stripped), or a ``"quoted"`` string on one line
(``\\"``, ``\\\\``, ``\\n``, ``\\t`` escapes), or a ``\"\"\"triple-quoted\"\"\"`` block that may span
lines and is taken verbatim. ``PARAMETER key value`` and ``MESSAGE role value`` take a word first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

__all__ = [
    "MESSAGE_ROLES",
    "ENGINE_PARAMETERS",
    "PARAMETER_TYPES",
    "Modelfile",
    "ModelfileError",
    "coerce_parameter",
    "parse_modelfile",
]

# Ollama's option names and their types. The removed ones (mirostat..use_mlock) are still sent by
# clients and written in Modelfiles, so they are accepted; the engine ignores them.
PARAMETER_TYPES: dict[str, type] = {
    "num_ctx": int,
    "num_predict": int,
    "num_keep": int,
    "seed": int,
    "temperature": float,
    "top_k": int,
    "top_p": float,
    "min_p": float,
    "typical_p": float,
    "repeat_last_n": int,
    "repeat_penalty": float,
    "presence_penalty": float,
    "frequency_penalty": float,
    "stop": str,  # repeatable: collects into a list
    "num_batch": int,
    "num_gpu": int,
    "main_gpu": int,
    "use_mmap": bool,
    "num_thread": int,
    "draft_num_predict": int,
    "mirostat": int,
    "mirostat_tau": float,
    "mirostat_eta": float,
    "tfs_z": float,
    "penalize_newline": bool,
    "numa": bool,
    "low_vram": bool,
    "f16_kv": bool,
    "logits_all": bool,
    "vocab_only": bool,
    "use_mlock": bool,
    # Heron's own: speculative decoding for the model's engine (ngram, suffix, draft:MODEL,
    # none) and its most drafts per step. They configure the engine, not a request.
    "speculative": str,
    "num_speculative_tokens": int,
}
ENGINE_PARAMETERS = frozenset({"speculative", "num_speculative_tokens"})
MESSAGE_ROLES = ("system", "user", "assistant")
_TRUE = ("1", "t", "true")
_FALSE = ("0", "f", "false")
_INT_MIN, _INT_MAX = -(1 << 63), (1 << 63) - 1
_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t", "r": "\r"}


class ModelfileError(ValueError):
    """A Modelfile (or a parameter) is invalid; the message names the line when there is one."""


def coerce_parameter(key: str, value: str | int | float | bool) -> Any:
    """Ollama's type for ``key`` applied to ``value`` (text from a Modelfile, or a JSON value).

    Raises ``ModelfileError`` for an unknown key or a value of the wrong type; non-finite floats
    are refused."""
    name = key.lower() if isinstance(key, str) else ""
    kind = PARAMETER_TYPES.get(name)
    if kind is None:
        raise ModelfileError(f"unknown parameter {str(key)[:80]!r}")
    bad = ModelfileError(
        f"invalid value {str(value)[:80]!r} for parameter {name} ({kind.__name__})"
    )
    if kind is str:
        if not isinstance(value, str):
            raise bad
        if name == "speculative":
            _check_speculative(value)
        return value
    if kind is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.strip().lower() in _TRUE + _FALSE:
            return value.strip().lower() in _TRUE
        raise bad
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise bad
    if kind is int:
        number: int | float
        if isinstance(value, float):
            if not value.is_integer():
                raise bad
            number = int(value)
        else:
            try:
                number = int(value.strip()) if isinstance(value, str) else value
            except ValueError:
                raise bad from None
        if not _INT_MIN <= number <= _INT_MAX:
            raise bad
        return number
    try:
        number = float(value.strip()) if isinstance(value, str) else float(value)
    except (ValueError, OverflowError):
        raise bad from None
    if not math.isfinite(number):
        raise bad
    return number


def _check_speculative(value: str) -> None:
    from heron.proposer.base import check_speculative_option

    try:
        check_speculative_option(value)
    except ValueError as exc:
        raise ModelfileError(str(exc)) from None


@dataclass(slots=True)
class Modelfile:
    """A parsed Modelfile. ``parameters`` keeps file order with typed values; ``stop`` may repeat."""

    from_: str
    parameters: list[tuple[str, Any]] = field(default_factory=list)
    template: str | None = None
    system: str | None = None
    license: list[str] = field(default_factory=list)
    messages: list[dict[str, str]] = field(default_factory=list)
    adapters: list[str] = field(default_factory=list)

    def parameter_dict(self) -> dict[str, Any]:
        """Parameters as the params layer's JSON object: last value wins, ``stop`` is a list."""
        out: dict[str, Any] = {}
        for key, value in self.parameters:
            if key == "stop":
                out.setdefault("stop", []).append(value)
            else:
                out[key] = value
        return out

    def render(self) -> str:
        """Modelfile text that ``parse_modelfile`` turns back into an equal object."""
        lines = [f"FROM {_quote(self.from_, bare_ok=True)}"]
        for path in self.adapters:
            lines.append(f"ADAPTER {_quote(path, bare_ok=True)}")
        if self.template is not None:
            lines.append(f"TEMPLATE {_quote(self.template)}")
        if self.system is not None:
            lines.append(f"SYSTEM {_quote(self.system)}")
        for key, value in self.parameters:
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, (int, float)):
                text = repr(value)
            else:
                text = _quote_line(str(value))
            lines.append(f"PARAMETER {key} {text}")
        for message in self.messages:
            lines.append(f"MESSAGE {message['role']} {_quote(message['content'])}")
        for text in self.license:
            lines.append(f"LICENSE {_quote(text)}")
        return "\n".join(lines) + "\n"


def _quote(text: str, bare_ok: bool = False) -> str:
    """Bare when allowed and unambiguous, else a triple-quoted block, else an escaped string."""
    if bare_ok and text and text == text.strip() and "\n" not in text and text[0] != '"':
        return text
    if '"""' not in text and not text.endswith('"') and "\r" not in text:
        return f'"""{text}"""'
    return _quote_line(text)


def _quote_line(text: str) -> str:
    """One-line ``"..."`` form, escaping backslash, quote and control characters."""
    out = text.replace("\\", "\\\\").replace('"', '\\"')
    out = out.replace("\n", "\\n").replace("\r", "\\r").replace("\t", "\\t")
    return f'"{out}"'


class _Lines:
    def __init__(self, text: str) -> None:
        self.lines = text.replace("\r\n", "\n").split("\n")
        self.index = 0  # next line to read

    def error(self, line_no: int, problem: str) -> ModelfileError:
        return ModelfileError(f"Modelfile line {line_no}: {problem}")


def _split_word(rest: str) -> tuple[str, str]:
    parts = rest.split(None, 1)
    if not parts:
        return "", ""
    return parts[0], parts[1] if len(parts) > 1 else ""


def _value(src: _Lines, line_no: int, rest: str, what: str) -> str:
    """The value starting at ``rest`` on line ``line_no``; reads more lines for a ``\"\"\"`` block."""
    rest = rest.lstrip()
    if rest.startswith('"""'):
        body = rest[3:]
        chunks: list[str] = []
        while True:
            end = body.find('"""')
            if end >= 0:
                chunks.append(body[:end])
                if body[end + 3 :].strip():
                    raise src.error(line_no, f'text after the closing """ of {what}')
                return "\n".join(chunks)
            chunks.append(body)
            if src.index >= len(src.lines):
                raise src.error(line_no, f'{what}: """ is never closed')
            body = src.lines[src.index]
            src.index += 1
    if rest.startswith('"'):
        out: list[str] = []
        i = 1
        while i < len(rest):
            ch = rest[i]
            if ch == "\\" and i + 1 < len(rest) and rest[i + 1] in _ESCAPES:
                out.append(_ESCAPES[rest[i + 1]])
                i += 2
                continue
            if ch == '"':
                if rest[i + 1 :].strip():
                    raise src.error(line_no, f"text after the closing quote of {what}")
                return "".join(out)
            out.append(ch)
            i += 1
        raise src.error(line_no, f"{what}: quote is never closed")
    value = rest.strip()
    if not value:
        raise src.error(line_no, f"{what} needs a value")
    return value


def parse_modelfile(text: str) -> Modelfile:
    """Parse Modelfile text. Raises ``ModelfileError`` naming the line of the first problem."""
    if not isinstance(text, str):
        raise ModelfileError("Modelfile must be text")
    src = _Lines(text)
    from_: str | None = None
    mf = Modelfile(from_="")
    while src.index < len(src.lines):
        line_no = src.index + 1
        line = src.lines[src.index]
        src.index += 1
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        word, rest = _split_word(line.lstrip())
        directive = word.upper()
        if directive == "FROM":
            if from_ is not None:
                raise src.error(line_no, "more than one FROM")
            from_ = _value(src, line_no, rest, "FROM")
        elif directive == "PARAMETER":
            key, rest = _split_word(rest)
            if not key:
                raise src.error(line_no, "PARAMETER needs a name and a value")
            raw = _value(src, line_no, rest, f"PARAMETER {key}")
            try:
                mf.parameters.append((key.lower(), coerce_parameter(key, raw)))
            except ModelfileError as e:
                raise src.error(line_no, str(e)) from None
        elif directive == "TEMPLATE":
            mf.template = _value(src, line_no, rest, "TEMPLATE")
        elif directive == "SYSTEM":
            mf.system = _value(src, line_no, rest, "SYSTEM")
        elif directive == "LICENSE":
            mf.license.append(_value(src, line_no, rest, "LICENSE"))
        elif directive == "ADAPTER":
            mf.adapters.append(_value(src, line_no, rest, "ADAPTER"))
        elif directive == "MESSAGE":
            role, rest = _split_word(rest)
            if role.lower() not in MESSAGE_ROLES:
                raise src.error(
                    line_no, f"MESSAGE role {role[:40]!r} must be one of {', '.join(MESSAGE_ROLES)}"
                )
            content = _value(src, line_no, rest, "MESSAGE")
            mf.messages.append({"role": role.lower(), "content": content})
        else:
            raise src.error(line_no, f"unknown directive {word[:40]!r}")
    if from_ is None:
        raise ModelfileError("Modelfile has no FROM line")
    if not from_.strip():
        raise ModelfileError("FROM is empty")
    mf.from_ = from_
    return mf
