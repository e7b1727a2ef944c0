"""The served model as Ollama's model routes describe it: ``/api/tags``, ``/api/show``,
``/api/ps``, and the ``keep_alive`` state behind ``/api/ps``.

Heron keeps its model in memory for the server's lifetime (unloading for real belongs to the
model store). ``Residency`` tracks what Ollama's scheduler would report instead: the model is
listed by ``/api/ps`` from startup, each request keeps it listed for its ``keep_alive`` (5m by
default, for ever if negative), ``keep_alive: 0`` takes it off the list once idle, and an empty
``/api/generate`` prompt or ``/api/chat`` message list puts it back.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import re
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from heron.server.common import APIError
from heron.server.ollama.protocol import (
    ListModel,
    ListResponse,
    ModelDetails,
    ProcessModel,
    ProcessResponse,
    ShowRequest,
    ShowResponse,
)
from heron.server.state import ServerState

DEFAULT_KEEP_ALIVE_S = 300.0  # Ollama's default, 5m
FOREVER_NS = 2**63 - 1  # Go's largest Duration: what Ollama reports for a negative keep_alive
_NS = 1_000_000_000

# GGUF general.file_type -> Ollama's quantization_level
_FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S",
    29: "IQ2_M", 30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
}  # fmt: skip
_DTYPE_BYTES = {"float32": 4, "float16": 2, "bfloat16": 2}


def rfc3339(ns: int) -> str:
    """UTC time with nanoseconds, as Go's RFC3339Nano writes it (``...T12:00:00.123456789Z``)."""
    secs, frac = divmod(ns, _NS)
    if secs >= 253402300800:  # datetime ends with year 9999
        secs, frac = 253402300799, _NS - 1
    base = datetime.fromtimestamp(secs, tz=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    return f"{base}.{frac:09d}Z"


def now() -> str:
    return rfc3339(time.time_ns())


_DURATION_PART = re.compile(r"(\d*\.?\d*)(ns|us|µs|μs|ms|s|m|h)")
_UNIT_S = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}


def parse_keep_alive(value: float | str | None) -> float | None:
    """Seconds to keep the model, ``math.inf`` for ever (any negative value), None when not
    given. Takes seconds as a number, or a Go duration such as "5m", "1h30m", "-1"."""
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        try:
            seconds = float(text)
        except ValueError:
            seconds = _parse_go_duration(text, value)
    else:
        seconds = float(value)
    if math.isnan(seconds):
        raise APIError(400, f'time: invalid duration "{value}"', param="keep_alive")
    return math.inf if seconds < 0 else seconds


def _parse_go_duration(text: str, original: str) -> float:
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    pos, total = 0, 0.0
    while body and pos < len(body):
        m = _DURATION_PART.match(body, pos)
        if m is None or m.group(1) in ("", "."):
            break
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if not body or pos != len(body):
        raise APIError(400, f'time: invalid duration "{original}"', param="keep_alive")
    return sign * total


def _human_number(n: int) -> str:
    """Ollama's style for parameter counts: 134.52M, 7.6B, 8B."""
    if n >= 1_000_000_000:
        v = n / 1e9
        return f"{v:.0f}B" if v == int(v) else f"{v:.1f}B"
    if n >= 1_000_000:
        v = n / 1e6
        return f"{v:.0f}M" if v == int(v) else f"{v:.2f}M"
    if n >= 1_000:
        return f"{n / 1e3:.0f}K"
    return str(n)


class ModelCard:
    """What Ollama's listing routes say about the served model, computed once."""

    def __init__(self, state: ServerState) -> None:
        engine = state.engine
        self.state = state
        self.name = state.served_model_name
        self.tag = self.name if ":" in self.name else f"{self.name}:latest"
        self.path = engine.model_path
        self.metadata = engine.metadata
        cfg = engine.model_config
        files = self._files()
        self.size = sum(os.path.getsize(f) for f in files)
        self.modified_at = rfc3339(max(os.stat(f).st_mtime_ns for f in files))
        self.num_params = int(self.metadata.get("general.parameter_count") or _count_params(cfg))
        gguf = bool(self.metadata)
        family = str(
            self.metadata.get("general.architecture")
            or cfg.extra.get("model_type")
            or cfg.architecture.removesuffix("ForCausalLM").lower()
        )
        if gguf:
            file_type = self.metadata.get("general.file_type")
            quant = _FILE_TYPES.get(file_type, "unknown") if isinstance(file_type, int) else ""
        else:
            hf = cfg.extra.get("hf_config") or {}
            dtype = hf.get("torch_dtype") or hf.get("dtype") or ""
            quant = {"float32": "F32", "float16": "F16", "bfloat16": "BF16"}.get(str(dtype), "")
        self.details = ModelDetails(
            format="gguf" if gguf else "safetensors",
            family=family,
            families=[family],
            parameter_size=_human_number(self.num_params),
            quantization_level=quant or "unknown",
        )
        self._digest: str | None = None
        self._digest_lock: asyncio.Lock | None = None

    def _files(self) -> list[str]:
        if os.path.isdir(self.path):
            found = []
            for root, _, names in os.walk(self.path):
                found += [os.path.join(root, n) for n in names]
            return sorted(found)
        return [self.path]

    def known(self, name: str) -> bool:
        """Ollama's names are case-insensitive and ``:latest`` is the default tag."""
        return self.state.model_known(name) or name.lower() in (self.name.lower(), self.tag.lower())

    def check(self, name: str) -> None:
        if not name:
            raise APIError(400, "model is required", param="model")
        if not self.known(name):
            raise APIError(404, f"model '{name}' not found", "not_found", param="model")

    async def digest(self) -> str:
        """sha256 hex of the model file(s), hashed once in a thread on first use."""
        if self._digest is None:
            if self._digest_lock is None:
                self._digest_lock = asyncio.Lock()
            async with self._digest_lock:
                if self._digest is None:
                    self._digest = await asyncio.to_thread(_sha256, self._files(), self.path)
        return self._digest

    def memory_bytes(self) -> int:
        """Estimated resident size: weights as the engine holds them, plus the KV cache."""
        engine = self.state.engine
        config = engine.config
        weight_bytes = 1 if config.quantization == "int8" else _DTYPE_BYTES.get(config.dtype, 4)
        cfg = engine.model_config
        per_token = 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim
        per_token *= _DTYPE_BYTES.get(config.cache.dtype, 4)
        if config.cache.num_blocks is not None:
            kv = config.cache.num_blocks * config.cache.block_size * per_token
        else:
            kv = config.cache.memory_bytes
        return self.num_params * weight_bytes + kv

    def model_info(self, verbose: bool) -> dict[str, Any]:
        if not self.metadata:
            return self._synthetic_info()
        info: dict[str, Any] = {}
        for key, value in self.metadata.items():
            if key in ("general.name", "tokenizer.chat_template"):
                continue  # Ollama leaves these out too
            if isinstance(value, list | tuple) and len(value) > 5 and not verbose:
                value = []  # token, merge and type arrays: only with verbose
            info[key] = _jsonable(value)
        info.setdefault("general.parameter_count", self.num_params)
        return info

    def _synthetic_info(self) -> dict[str, Any]:
        cfg = self.state.engine.model_config
        fam = self.details.family
        return {
            "general.architecture": fam,
            "general.parameter_count": self.num_params,
            f"{fam}.context_length": cfg.max_position_embeddings,
            f"{fam}.embedding_length": cfg.hidden_size,
            f"{fam}.feed_forward_length": cfg.intermediate_size,
            f"{fam}.block_count": cfg.num_hidden_layers,
            f"{fam}.attention.head_count": cfg.num_attention_heads,
            f"{fam}.attention.head_count_kv": cfg.num_key_value_heads,
            f"{fam}.vocab_size": cfg.vocab_size,
        }

    def license(self) -> str:
        value = self.metadata.get("general.license")
        if isinstance(value, list):
            return "\n".join(str(v) for v in value)
        return str(value) if value else ""

    def parameters(self) -> list[tuple[str, str]]:
        """The defaults Heron applies, as Modelfile PARAMETER lines would give them."""
        engine = self.state.engine
        params = [("num_ctx", str(engine.max_model_len))]
        for tid in sorted(engine.tokenizer.eos_token_ids):
            text = engine.tokenizer.id_to_token(tid)
            if text:
                params.append(("stop", _go_quote(text)))
        return params


def _count_params(cfg: Any) -> int:
    """Parameters of a Llama-style decoder, from its shape (the GGUF header may not say)."""
    h, layers = cfg.hidden_size, cfg.num_hidden_layers
    q = cfg.num_attention_heads * cfg.head_dim
    kv = cfg.num_key_value_heads * cfg.head_dim
    per_layer = h * q * 2 + h * kv * 2 + 3 * h * cfg.intermediate_size + 2 * h
    embed = cfg.vocab_size * h * (1 if cfg.tie_word_embeddings else 2)
    return int(embed + layers * per_layer + h)


def _sha256(files: Sequence[str], root: str) -> str:
    digest = hashlib.sha256()
    for path in files:
        if len(files) > 1:
            digest.update(os.path.relpath(path, root).encode() + b"\0")
        with open(path, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest.hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, bool | int | str) or value is None:
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _go_quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


class Residency:
    """Whether Ollama clients should see the served model as loaded, and until when (see the
    module docstring: the weights stay in memory whatever this says)."""

    def __init__(self) -> None:
        self.expires_ns = time.time_ns() + int(DEFAULT_KEEP_ALIVE_S * _NS)  # loaded at startup
        self.num_active = 0

    def keep(self, seconds: float | None) -> None:
        """Keep the model listed for ``seconds`` from now (None: the default, ``math.inf``:
        for ever); 0 unloads it, unless a request still runs (its end decides)."""
        ka = DEFAULT_KEEP_ALIVE_S if seconds is None else seconds
        if ka <= 0:
            if self.num_active == 0:
                self.expires_ns = 0
                return
            ka = DEFAULT_KEEP_ALIVE_S
        delta = FOREVER_NS if ka * _NS >= FOREVER_NS else int(ka * _NS)
        self.expires_ns = time.time_ns() + delta

    def loaded(self) -> bool:
        return self.num_active > 0 or time.time_ns() < self.expires_ns


# ------------------------------------------------------------------------------- routes
async def list_models(card: ModelCard) -> ListResponse:
    """``GET /api/tags``: the served model."""
    model = ListModel(
        name=card.tag,
        model=card.tag,
        modified_at=card.modified_at,
        size=card.size,
        digest=await card.digest(),
        details=card.details,
    )
    return ListResponse(models=[model])


async def running_models(card: ModelCard, residency: Residency) -> ProcessResponse:
    """``GET /api/ps``: the served model while it counts as loaded."""
    if not residency.loaded():
        return ProcessResponse(models=[])
    expires = residency.expires_ns
    if residency.num_active and expires <= time.time_ns():
        expires = time.time_ns() + int(DEFAULT_KEEP_ALIVE_S * _NS)  # in use: not expiring
    model = ProcessModel(
        name=card.tag,
        model=card.tag,
        size=card.memory_bytes(),
        digest=await card.digest(),
        details=card.details,
        expires_at=rfc3339(expires),
        size_vram=0,
        context_length=card.state.engine.max_model_len,
    )
    return ProcessResponse(models=[model])


def show_model(card: ModelCard, req: ShowRequest) -> ShowResponse:
    """``POST /api/show``: details, a Modelfile, the chat template and the GGUF metadata."""
    card.check(req.model or req.name)
    template = card.state.engine.tokenizer.chat_template or ""
    params = card.parameters()
    license_text = card.license()
    lines = [
        '# Modelfile generated by "heron"',
        "# To build a new Modelfile based on this, replace FROM with:",
        f"# FROM {card.tag}",
        "",
        f"FROM {card.tag}",
    ]
    if template:
        lines.append(f'TEMPLATE """{template}"""')
    if req.system:
        lines.append(f'SYSTEM """{req.system}"""')
    lines += [f"PARAMETER {k} {v}" for k, v in params]
    if license_text:
        lines.append(f'LICENSE """{license_text}"""')
    return ShowResponse(
        modelfile="\n".join(lines) + "\n",
        parameters="\n".join(f"{k:<30} {v}" for k, v in params),
        template=template,
        system=req.system or None,
        license=license_text or None,
        details=card.details,
        model_info=card.model_info(bool(req.verbose)),
        capabilities=["completion"],
        modified_at=card.modified_at,
    )
