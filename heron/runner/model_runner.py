"""Runs one batched forward per step over every scheduled token.

Host work (flattening token ids, positions, slots and block tables) happens once per step in
``prepare_inputs``; the forward itself has no per-sequence Python loop and no ``.item()``.
Decodes are laid out first and prefill chunks after them, so the attention backend can treat
each kind as one padded group.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass

import numpy as np
import torch

from heron.attention import AttentionBatch, get_attention_backend
from heron.config import EngineConfig, ModelConfig
from heron.kernels import CACHE_DTYPES, Kernels, attach_kernels, cpu_kernels, require_cpu_kernels
from heron.kernels.fused import bind_fused_decoder
from heron.kernels.quant import auto_kind
from heron.layers.linear import Linear
from heron.lora.layer import LoRABatch
from heron.lora.manager import LoRAManager
from heron.models import build_model
from heron.runner.prompt_logprobs import PromptLogprobsPlan
from heron.runner.sampler import Sampler, SamplerOutput
from heron.scheduler.output import ScheduledRequest, SchedulerOutput

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(slots=True)
class ModelInputs:
    input_ids: torch.Tensor  # [num_tokens]
    positions: torch.Tensor  # [num_tokens]
    logits_indices: torch.Tensor  # [num_sampled]: last token of each sampling request
    sampled: list[ScheduledRequest]  # rows of the logits, in order
    attention: AttentionBatch
    prompt_logprobs: PromptLogprobsPlan  # prompt positions to score (usually none)
    lora: LoRABatch | None = None  # the rows that use an adapter, by slot (None: none do)


def apply_quantization(
    model: torch.nn.Module, quantization: str | None, kernels: Kernels | None
) -> dict[str, int]:
    """Quantize every ``Linear`` of ``model`` in place as ``quantization`` asks (see
    ``EngineConfig.quantization``); returns how many linears got each kind."""
    counts: dict[str, int] = {}
    if quantization is None:
        return counts
    if quantization == "auto" and kernels is None:
        logger.warning("Heron's CPU kernels are unavailable; weights stay float32 (exact)")
        return counts
    for module in model.modules():
        if not isinstance(module, Linear):
            continue
        kind = quantization
        if quantization == "auto":
            assert kernels is not None
            kind = auto_kind(module.weight, kernels)
        if kind != "none":
            module.quantize(kind, kernels)
        counts[kind] = counts.get(kind, 0) + 1
    return counts


def kv_bytes_per_block(model_config: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    per_token = 2 * model_config.num_key_value_heads * model_config.head_dim
    elem = torch.empty((), dtype=dtype).element_size()
    return model_config.num_hidden_layers * block_size * per_token * elem


def plan_num_blocks(model_config: ModelConfig, config: EngineConfig) -> int:
    """KV blocks the cache gets: ``cache.num_blocks`` if set, else what fits the budget."""
    if config.cache.num_blocks is not None:
        return config.cache.num_blocks
    per_block = kv_bytes_per_block(
        model_config, config.cache.block_size, _DTYPES[config.cache.dtype]
    )
    return max(1, config.cache.memory_bytes // per_block)


def plan_max_model_len(model_config: ModelConfig, config: EngineConfig) -> tuple[int, int]:
    """(max_model_len, wanted): the longest sequence the model and the KV pool can hold,
    and what was asked for (the config's value or the model's context length)."""
    capacity = plan_num_blocks(model_config, config) * config.cache.block_size
    wanted = config.max_model_len or model_config.max_position_embeddings
    return min(wanted, model_config.max_position_embeddings, capacity), wanted


class ModelRunner:
    def __init__(
        self,
        model_config: ModelConfig,
        weights: Callable[[], Iterator[tuple[str, torch.Tensor]]],
        config: EngineConfig,
    ) -> None:
        self.model_config = model_config
        self.config = config
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        self.dtype = _DTYPES[config.dtype]
        self.model = build_model(model_config)
        self.model.load_weights(weights())
        self.model.to(self.dtype)
        self.kv_dtype = _DTYPES[config.cache.dtype]
        self.kernels = self._kernels(config)
        self.quantization = apply_quantization(self.model, config.quantization, self.kernels)
        self.model.eval()
        # Adapters (EngineConfig.lora): the adaptable linears become LoRALinears here.
        self.lora: LoRAManager | None = None
        if config.lora is not None:
            self.lora = LoRAManager(self.model, model_config, config.lora, self.dtype)
        backend = config.attention_backend
        if backend == "auto":
            usable = self.kernels is not None and self.kv_dtype in CACHE_DTYPES
            backend = "cpu" if usable else "torch"
        self.backend = get_attention_backend(backend)
        self.block_size = config.cache.block_size
        self.num_blocks = plan_num_blocks(model_config, config)
        c = model_config
        # [num_layers, K/V, num_blocks, block_size, num_kv_heads, head_dim]
        self.kv_caches = torch.zeros(
            c.num_hidden_layers,
            2,
            self.num_blocks,
            self.block_size,
            c.num_key_value_heads,
            c.head_dim,
            dtype=self.kv_dtype,
        )
        # The fused decode path holds views of these caches: bind it to each new cache.
        self.model.fused = bind_fused_decoder(
            self.model, self.kv_caches, self.backend, self.kernels
        )
        self.sampler = Sampler(c.vocab_size)
        self.sampler.seed(config.seed)
        # Called with (sampled rows, logits [num_sampled, vocab]) each step; parity tests use it.
        self.logits_hook: Callable[[list[ScheduledRequest], torch.Tensor], None] | None = None

    def _kernels(self, config: EngineConfig) -> Kernels | None:
        """Heron's CPU kernels when this model can use them (float32), attached to every
        layer that has a kernel path; None otherwise."""
        wanted = config.use_kernels and self.dtype == torch.float32
        needed = config.quantization in ("q4_1", "q8_0") or config.attention_backend == "cpu"
        if not wanted and not needed:
            return None
        kernels = require_cpu_kernels() if needed else cpu_kernels()
        if kernels is None:
            return None
        attach_kernels(self.model, kernels)
        return kernels

    def prepare_inputs(self, out: SchedulerOutput) -> ModelInputs:
        """Flatten the step's work; decodes first, then prefill chunks."""
        order = sorted(out.scheduled, key=lambda s: s.num_scheduled_tokens != 1)
        ids: list[int] = []
        positions: list[np.ndarray] = []
        slots: list[np.ndarray] = []
        query_lens, context_lens, tables = [], [], []
        logits_indices, sampled = [], []
        bs = self.block_size
        num_decodes = 0
        prompt_plan = PromptLogprobsPlan()
        for s in order:
            start, n = s.num_computed_tokens, s.num_scheduled_tokens
            num_decodes += n == 1
            if s.request.needs_prompt_logprobs:
                prompt_plan.add(s, len(ids))
            ids.extend(s.request.all_token_ids[start : start + n])
            pos = np.arange(start, start + n, dtype=np.int64)
            table = np.asarray(s.block_ids, dtype=np.int64)
            positions.append(pos)
            slots.append(table[pos // bs] * bs + pos % bs)
            query_lens.append(n)
            context_lens.append(start + n)
            tables.append(s.block_ids)
            if s.sample:
                logits_indices.append(len(ids) - 1)
                sampled.append(s)
        attention = AttentionBatch(
            query_lens=query_lens,
            context_lens=context_lens,
            block_tables=tables,
            num_decodes=num_decodes,
            slot_mapping=torch.from_numpy(np.concatenate(slots)),
            block_size=bs,
        )
        return ModelInputs(
            input_ids=torch.tensor(ids, dtype=torch.long),
            positions=torch.from_numpy(np.concatenate(positions)),
            logits_indices=torch.tensor(logits_indices, dtype=torch.long),
            sampled=sampled,
            attention=attention,
            prompt_logprobs=prompt_plan,
            lora=self.lora.plan(order, len(ids)) if self.lora is not None else None,
        )

    @torch.inference_mode()
    def execute(self, out: SchedulerOutput) -> tuple[list[ScheduledRequest], SamplerOutput]:
        """Run the step's forward and sample. Writes KV into the cache. Returns the sampling
        rows (scheduled requests whose chunk reached their end) and one token per row, with
        the prompt scores of the requests that asked for them."""
        inputs = self.prepare_inputs(out)
        metadata = self.backend.prepare_metadata(inputs.attention)
        batch = self.sampler.prepare([s.request for s in inputs.sampled])
        lora: AbstractContextManager[None] = nullcontext()
        if self.lora is not None:
            lora = self.lora.active(inputs.lora)
        with lora:
            hidden = self.model(
                inputs.input_ids, inputs.positions, self.kv_caches, self.backend, metadata
            )
        prompt = inputs.prompt_logprobs.score(hidden, self.model.compute_logits)
        if not inputs.sampled:
            return [], SamplerOutput([], [], prompt)
        logits = self.model.compute_logits(hidden.index_select(0, inputs.logits_indices))
        if self.logits_hook is not None:
            self.logits_hook(inputs.sampled, logits)
        sampled = self.sampler.sample(logits, batch)
        sampled.prompt_logprobs = prompt
        return inputs.sampled, sampled
