"""Models as Ollama's model routes describe them: ``/api/tags``, ``/api/show``,
``/api/ps``, and the ``keep_alive`` state behind ``/api/ps``.

``/api/tags`` lists the store (and the command line's model); ``/api/ps`` lists what the
``ModelManager`` has loaded, each with the expiry its ``keep_alive`` set.
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import os
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from heron.config import EngineConfig
from heron.loader import Checkpoint, load_checkpoint
from heron.models.registry import is_embedding_architecture
from heron.reasoning import detect
from heron.server.common import APIError
from heron.server.model_spec import ModelSpec, parse_duration, spec_from_store
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


def parse_keep_alive(value: float | str | None) -> float | None:
    """Seconds to keep the model, ``math.inf`` for ever (any negative value), None when not
    given. Takes seconds as a number, or a Go duration such as "5m", "1h30m", "-1"."""
    if value is None:
        return None
    try:
        return parse_duration(value)
    except ValueError as exc:
        raise APIError(400, str(exc), param="keep_alive") from None


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
    """What Ollama's model routes say about one model, from its checkpoint header (the
    weights need not be loaded)."""

    def __init__(self, spec: ModelSpec, checkpoint: Checkpoint) -> None:
        self.spec = spec
        self.name = spec.name
        self.tag = spec.name if ":" in spec.name.rsplit("/", 1)[-1] else f"{spec.name}:latest"
        self.path = spec.path
        self.metadata: dict[str, Any] = checkpoint.gguf.metadata if checkpoint.gguf else {}
        cfg = self.model_config = checkpoint.config
        self.size = spec.size
        self.modified_at = rfc3339(int(spec.modified_at * _NS))
        self.is_embedding = is_embedding_architecture(cfg.architecture)
        counted = _count_encoder_params(cfg) if self.is_embedding else _count_params(cfg)
        self.num_params = int(self.metadata.get("general.parameter_count") or counted)
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
            parent_model=spec.base or "",
            format="gguf" if gguf else "safetensors",
            family=family,
            families=[family],
            parameter_size=_human_number(self.num_params),
            quantization_level=quant or "unknown",
        )
        self.chat_template = spec.template or (
            self.metadata.get("tokenizer.chat_template") if gguf else _hf_template(spec.path)
        )
        self._digest: str | None = spec.digest
        self.capabilities = ["embedding"] if self.is_embedding else ["completion"]
        if not self.is_embedding and detect(self.chat_template):
            self.capabilities.append("thinking")

    def _files(self) -> list[str]:
        if os.path.isdir(self.path):
            found = []
            for root, _, names in os.walk(self.path):
                found += [os.path.join(root, n) for n in names]
            return sorted(found)
        return [self.path]

    async def digest(self) -> str:
        """The manifest's sha256 for stored models; for a path, the files' sha256, hashed
        once in a thread."""
        if self._digest is None:
            self._digest = await asyncio.to_thread(_sha256, self._files(), self.path)
        return self._digest

    def memory_bytes(self, config: EngineConfig) -> int:
        """Estimated resident size: weights as the engine holds them, plus the KV cache."""
        weight_bytes = 1 if config.quantization == "int8" else _DTYPE_BYTES.get(config.dtype, 4)
        if self.is_embedding:  # an encoder has no KV cache
            return self.num_params * weight_bytes
        cfg = self.model_config
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
        cfg = self.model_config
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
        if self.spec.license:
            return "\n".join(self.spec.license)
        value = self.metadata.get("general.license")
        if isinstance(value, list):
            return "\n".join(str(v) for v in value)
        return str(value) if value else ""

    def parameters(self) -> list[tuple[str, str]]:
        """The Modelfile's PARAMETER lines, else the defaults Heron derives (stop tokens)."""
        if self.spec.parameters:
            out: list[tuple[str, str]] = []
            for key, value in self.spec.parameters.items():
                for v in value if isinstance(value, list) else [value]:
                    out.append((key, _go_quote(v) if isinstance(v, str) else _plain(v)))
            return out
        params = []
        tokenizer_eos = self.metadata.get("tokenizer.ggml.eos_token_id")
        tokens = self.metadata.get("tokenizer.ggml.tokens")
        if isinstance(tokenizer_eos, int) and isinstance(tokens, list | tuple):
            if 0 <= tokenizer_eos < len(tokens):
                params.append(("stop", _go_quote(str(tokens[tokenizer_eos]))))
        return params


def _plain(value: Any) -> str:
    """A parameter value as Ollama prints it: ``true``, ``0.7``, ``0`` (not ``0.0``)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _hf_template(path: str) -> str | None:
    import json

    try:
        with open(os.path.join(path, "tokenizer_config.json"), encoding="utf-8") as f:
            value = json.load(f).get("chat_template")
    except (OSError, ValueError):
        return None
    return value if isinstance(value, str) else None


class Cards:
    """ModelCards by model, built in a thread on first use (reads the checkpoint header)."""

    def __init__(self) -> None:
        self._cards: dict[tuple[str, str, float], ModelCard] = {}

    async def get(self, spec: ModelSpec) -> ModelCard:
        key = (spec.name, spec.path, spec.modified_at)
        card = self._cards.get(key)
        if card is None:
            try:
                checkpoint = await asyncio.to_thread(load_checkpoint, spec.path)
            except (OSError, ValueError) as exc:
                raise APIError(
                    500, f"cannot read model '{spec.name}': {exc}", "server_error"
                ) from None
            card = self._cards[key] = ModelCard(spec, checkpoint)
        return card


def _count_params(cfg: Any) -> int:
    """Parameters of a Llama-style decoder, from its shape (the GGUF header may not say)."""
    h, layers = cfg.hidden_size, cfg.num_hidden_layers
    q = cfg.num_attention_heads * cfg.head_dim
    kv = cfg.num_key_value_heads * cfg.head_dim
    per_layer = h * q * 2 + h * kv * 2 + 3 * h * cfg.intermediate_size + 2 * h
    embed = cfg.vocab_size * h * (1 if cfg.tie_word_embeddings else 2)
    return int(embed + layers * per_layer + h)


def _count_encoder_params(cfg: Any) -> int:
    """Parameters of a BERT-style encoder (embeddings, post-norm layers, pooler)."""
    h, inter = cfg.hidden_size, cfg.intermediate_size
    hf = cfg.extra.get("hf_config") or {}
    types = hf.get("type_vocab_size", 2) if isinstance(hf, dict) else 2
    embed = (cfg.vocab_size + cfg.max_position_embeddings + int(types)) * h + 2 * h
    per_layer = 4 * (h * h + h) + 2 * h * inter + inter + h + 4 * h
    return int(embed + cfg.num_hidden_layers * per_layer + h * h + h)


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


# ------------------------------------------------------------------------------- routes
def _all_specs(state: ServerState) -> list[ModelSpec]:
    """The command line's model and every stored model it does not shadow (a stored
    command-line model is listed once, as itself)."""
    models = state.models
    pinned = models.pinned
    specs: list[ModelSpec] = []
    if pinned is not None and pinned.stored is None:
        specs.append(pinned)
    if models.store is not None:
        for stored in models.store.list():
            if pinned is not None and pinned.stored is None and pinned.matches(stored.name.display):
                continue  # the command line's model answers to this name
            specs.append(spec_from_store(models.store, stored))
    return specs


async def list_models(state: ServerState, cards: Cards) -> ListResponse:
    """``GET /api/tags``: every model the server can load."""
    out = []
    for spec in _all_specs(state):
        try:
            card = await cards.get(spec)
        except APIError:
            continue  # an unreadable model is left out of the list rather than failing it
        out.append(
            ListModel(
                name=card.tag,
                model=card.tag,
                modified_at=card.modified_at,
                size=card.size,
                digest=await card.digest(),
                details=card.details,
            )
        )
    return ListResponse(models=out)


async def running_models(state: ServerState, cards: Cards) -> ProcessResponse:
    """``GET /api/ps``: the loaded models and when each will be unloaded."""
    out = []
    for loaded in state.models.running():
        card = await cards.get(loaded.spec)
        expires = loaded.expires_at
        if loaded.busy and math.isfinite(expires) and expires <= time.time():
            expires = time.time() + loaded.keep_alive  # in use: not expiring yet
        expires_ns = FOREVER_NS if not math.isfinite(expires) else int(expires * _NS)
        out.append(
            ProcessModel(
                name=card.tag,
                model=card.tag,
                size=card.memory_bytes(loaded.engine.config),
                digest=await card.digest(),
                details=card.details,
                expires_at=rfc3339(expires_ns),
                size_vram=0,
                context_length=loaded.engine.max_model_len,
            )
        )
    return ProcessResponse(models=out)


async def show_model(state: ServerState, cards: Cards, req: ShowRequest) -> ShowResponse:
    """``POST /api/show``: details, a Modelfile, the chat template and the GGUF metadata."""
    spec = state.models.resolve(req.model or req.name)
    card = await cards.get(spec)
    template = card.chat_template or ""
    params = card.parameters()
    license_text = card.license()
    system = req.system or spec.system
    lines = [
        '# Modelfile generated by "heron show"',
        "# To build a new Modelfile based on this, replace FROM with:",
        f"# FROM {card.tag}",
        "",
        f"FROM {spec.base or card.tag}",
    ]
    if spec.lora is not None:
        lines.append(f"ADAPTER {spec.lora.path}")
    if template:
        lines.append(f'TEMPLATE """{template}"""')
    if system:
        lines.append(f'SYSTEM """{system}"""')
    lines += [f"PARAMETER {k} {v}" for k, v in params]
    for m in spec.messages:
        lines.append(f'MESSAGE {m.get("role", "user")} """{m.get("content", "")}"""')
    if license_text:
        lines.append(f'LICENSE """{license_text}"""')
    return ShowResponse(
        modelfile="\n".join(lines) + "\n",
        parameters="\n".join(f"{k:<30} {v}" for k, v in params),
        template=template,
        system=system or None,
        license=license_text or None,
        details=card.details,
        model_info=card.model_info(bool(req.verbose)),
        capabilities=card.capabilities,
        modified_at=card.modified_at,
    )
