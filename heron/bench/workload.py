"""What a benchmark sends: endpoints, request settings, and workloads as levels of users."""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

API_KINDS = ("openai", "ollama")
WORKLOADS = ("sequential", "concurrent", "multi-turn", "sweep")

DEFAULT_MODEL = "smollm2"
DEFAULT_PROMPT = "Explain the difference between TCP and UDP in 3 sentences."
DEFAULT_MAX_TOKENS = 200
DEFAULT_SEQUENTIAL_REQUESTS = 10
DEFAULT_CONCURRENT_USERS = (8,)
DEFAULT_SWEEP_USERS = (1, 2, 4, 8, 16, 32, 64)
DEFAULT_CONVERSATIONS = 5
DEFAULT_TURNS = 3

# The user messages of turns 2, 3, ... of a multi-turn conversation, in order (cycled).
FOLLOW_UPS = (
    "Give one concrete example of an application that uses each protocol.",
    "Which of the two would you choose for live video calls, and why?",
    "Summarise the trade-off in one sentence.",
)
# Filler that --prompt-tokens repeats before the question; about 4 characters per token.
_FILLER = (
    "Networks move data in packets, and every packet carries headers that tell routers "
    "where it goes and how the receiver should put the stream back together. "
)
_CHARS_PER_TOKEN = 4
_NAME = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")


class BenchError(ValueError):
    """A bad benchmark configuration; the message is shown to the user as is."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """A server to measure. ``url`` is the base URL (scheme, host, port, optional path prefix);
    the chat path is added per API: ``/v1/chat/completions`` (openai) or ``/api/chat`` (ollama)."""

    name: str
    url: str
    api: str = "openai"

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise BenchError(
                f"endpoint name {self.name!r}: use 1-64 letters, digits, '_', '.', ':' or '-'"
            )
        if not re.match(r"^https?://[^/\s]+", self.url):
            raise BenchError(f"endpoint {self.name}: URL {self.url!r} must start http(s)://host")
        if self.api not in API_KINDS:
            raise BenchError(f"endpoint {self.name}: API {self.api!r} is not one of {API_KINDS}")

    @property
    def chat_url(self) -> str:
        base = self.url.rstrip("/")
        if self.api == "openai":
            return base.removesuffix("/v1") + "/v1/chat/completions"
        return base.removesuffix("/api") + "/api/chat"


def parse_endpoint(text: str) -> Endpoint:
    """``NAME=URL`` or ``NAME=URL@API`` (API: openai, the default, or ollama)."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest:
        raise BenchError(
            f"--endpoint {text!r}: expected NAME=URL or NAME=URL@API, "
            "e.g. heron=http://127.0.0.1:11434 or ollama=http://127.0.0.1:11434@ollama"
        )
    url, api = rest, "openai"
    head, at, tail = rest.rpartition("@")
    if at and tail in API_KINDS:
        url, api = head, tail
    elif at and "/" not in tail and ":" not in tail:
        raise BenchError(f"--endpoint {text!r}: unknown API {tail!r}; use openai or ollama")
    return Endpoint(name=name.strip(), url=url.strip(), api=api)


@dataclass(frozen=True, slots=True)
class RequestSettings:
    """The body every measured request carries (besides its messages).

    EOS suppression (``suppress_eos``) sends ``"ignore_eos": true`` (Heron and llama-server honour
    it) and, for each of ``eos_token_ids``, ``"logit_bias": {id: -100}`` (llama-cpp-python
    honours only this). The Ollama API has neither: its requests go without them."""

    model: str = DEFAULT_MODEL
    max_tokens: int = DEFAULT_MAX_TOKENS
    temperature: float = 0.0
    suppress_eos: bool = True
    eos_token_ids: tuple[int, ...] = ()
    api_key: str | None = None
    timeout: float = 600.0
    # Constrain answers to this schema: OpenAI ``response_format``, Ollama ``format``.
    json_schema: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        if self.max_tokens < 1:
            raise BenchError("--max-tokens must be at least 1")
        if self.temperature < 0:
            raise BenchError("--temperature must be >= 0")
        if self.timeout <= 0:
            raise BenchError("--timeout must be > 0")

    def body(self, api: str, messages: list[dict[str, str]]) -> dict[str, Any]:
        """The JSON request body for ``api`` (always streamed)."""
        if api == "ollama":
            ollama: dict[str, Any] = {
                "model": self.model,
                "messages": messages,
                "stream": True,
                "options": {"num_predict": self.max_tokens, "temperature": self.temperature},
            }
            if self.json_schema is not None:
                ollama["format"] = self.json_schema
            return ollama
        body: dict[str, Any] = {
            "model": self.model,
            "messages": messages,
            "max_tokens": self.max_tokens,
            "temperature": self.temperature,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if self.json_schema is not None:
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {"name": "bench", "schema": self.json_schema},
            }
        if self.suppress_eos:
            body["ignore_eos"] = True
            if self.eos_token_ids:
                body["logit_bias"] = {str(i): -100 for i in self.eos_token_ids}
        return body


def load_schema(path: Path | None) -> dict[str, Any] | None:
    """The JSON schema in ``path`` (None for None). Raises BenchError if it is not one."""
    if path is None:
        return None
    try:
        schema = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise BenchError(f"--json-schema {path}: {exc}") from None
    if not isinstance(schema, dict):
        raise BenchError(f"--json-schema {path}: not a JSON object")
    return schema


@dataclass(frozen=True, slots=True)
class Level:
    """One load level: ``users`` clients in flight at once.

    Single-turn levels: each user sends ``requests_per_user`` requests back to back.
    Multi-turn levels: ``conversations`` conversations of ``turns`` turns are shared out
    round-robin between the users (user u runs conversations u, u+users, ...), each
    conversation's turns one after another."""

    users: int
    requests_per_user: int = 1
    conversations: int = 0
    turns: int = 1

    def __post_init__(self) -> None:
        if self.users < 1:
            raise BenchError(f"users must be >= 1 (got {self.users})")
        if self.requests_per_user < 1:
            raise BenchError("requests per user must be >= 1")
        if self.conversations < 0 or self.turns < 1:
            raise BenchError("conversations must be >= 0 and turns >= 1")

    @property
    def multi_turn(self) -> bool:
        return self.conversations > 0

    @property
    def num_requests(self) -> int:
        if self.multi_turn:
            return self.conversations * self.turns
        return self.users * self.requests_per_user


@dataclass(frozen=True, slots=True)
class Workload:
    """A named list of levels, each measured ``repeat`` times per endpoint. ``warmup``
    unmeasured requests go to each endpoint before its first run and after its server
    restarts."""

    kind: str
    levels: tuple[Level, ...]
    prompt: str = DEFAULT_PROMPT
    warmup: int = 1
    repeat: int = 1

    def __post_init__(self) -> None:
        if self.kind not in WORKLOADS:
            raise BenchError(
                f"unknown workload {self.kind!r}; choose one of {', '.join(WORKLOADS)}"
            )
        if not self.levels:
            raise BenchError("a workload needs at least one level")
        if self.warmup < 0:
            raise BenchError("--warmup must be >= 0")
        if self.repeat < 1:
            raise BenchError("--repeat must be >= 1")


def parse_users(values: Sequence[str]) -> tuple[int, ...]:
    """``--users`` values; each may hold several numbers separated by commas or spaces."""
    out: list[int] = []
    for value in values:
        for part in re.split(r"[,\s]+", value.strip()):
            if not part:
                continue
            try:
                users = int(part)
            except ValueError:
                raise BenchError(f"--users {part!r} is not a whole number") from None
            if users < 1:
                raise BenchError(f"--users must be >= 1 (got {users})")
            out.append(users)
    return tuple(out)


def build_workload(
    kind: str,
    users: Sequence[int] = (),
    *,
    requests: int = DEFAULT_SEQUENTIAL_REQUESTS,
    requests_per_user: int = 1,
    conversations: int = DEFAULT_CONVERSATIONS,
    turns: int = DEFAULT_TURNS,
    prompt: str = DEFAULT_PROMPT,
    warmup: int = 1,
    repeat: int = 1,
) -> Workload:
    """The levels of a workload. ``users`` is ignored by ``sequential`` and defaults to 8
    (concurrent), the 1..64 doubling sweep (sweep) or 1 (multi-turn: conversations in flight)."""
    if kind not in WORKLOADS:
        raise BenchError(f"unknown workload {kind!r}; choose one of {', '.join(WORKLOADS)}")
    if any(u < 1 for u in users):
        raise BenchError(f"--users must be >= 1 (got {min(users)})")
    if kind == "sequential":
        if requests < 1:
            raise BenchError("--requests must be >= 1")
        levels: tuple[Level, ...] = (Level(users=1, requests_per_user=requests),)
    elif kind == "multi-turn":
        if conversations < 1 or turns < 1:
            raise BenchError("--conversations and --turns must be >= 1")
        levels = tuple(
            Level(users=u, conversations=conversations, turns=turns) for u in (users or (1,))
        )
    else:
        default = DEFAULT_SWEEP_USERS if kind == "sweep" else DEFAULT_CONCURRENT_USERS
        levels = tuple(
            Level(users=u, requests_per_user=requests_per_user) for u in (users or default)
        )
    return Workload(kind=kind, levels=levels, prompt=prompt, warmup=warmup, repeat=repeat)


def synth_prompt(num_tokens: int, question: str = DEFAULT_PROMPT) -> str:
    """A prompt of about ``num_tokens`` tokens: filler text repeated (and cut at a word) in
    front of ``question``, counting 4 characters per token. The true count depends on the
    tokenizer; results record the prompt tokens each server reports."""
    if num_tokens < 1:
        raise BenchError("--prompt-tokens must be >= 1")
    budget = num_tokens * _CHARS_PER_TOKEN - len(question) - 1
    if budget <= 0:
        return question
    filler = (_FILLER * (budget // len(_FILLER) + 1))[:budget]
    filler = filler.rsplit(" ", 1)[0] if " " in filler else filler
    return f"{filler} {question}"


def follow_up(turn: int) -> str:
    """The user message of 1-based ``turn`` >= 2."""
    return FOLLOW_UPS[(turn - 2) % len(FOLLOW_UPS)]


def run_order(names: Sequence[str], repeat_index: int) -> list[str]:
    """Endpoint order of one repeat: as given on even repeats, reversed on odd ones, so that
    drift of the machine over a level weighs on every endpoint alike (A,B,C then C,B,A)."""
    return list(names) if repeat_index % 2 == 0 else list(reversed(names))
