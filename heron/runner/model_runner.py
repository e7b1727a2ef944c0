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
from pathlib import Path

import numpy as np
import torch

from heron.attention import AttentionBatch, get_attention_backend
from heron.config import EngineConfig, ModelConfig
from heron.distributed import shard
from heron.distributed.group import TensorParallelGroup
from heron.distributed.step import pack_step
from heron.kernels import CACHE_DTYPES, Kernels, attach_kernels, cpu_kernels, require_cpu_kernels
from heron.kernels.fused import bind_fused_decoder
from heron.kernels.quant import auto_kind
from heron.kvcache.plan import plan_num_blocks
from heron.layers.linear import Linear
from heron.lora.layer import LoRABatch
from heron.lora.manager import LoRAManager
from heron.models import build_model
from heron.runner import weight_cache
from heron.runner.prompt_logprobs import PromptLogprobsPlan
from heron.runner.rejection import RejectionSampler
from heron.runner.sampler import Sampler, SamplerOutput
from heron.scheduler.output import ScheduledRequest, SchedulerOutput

logger = logging.getLogger(__name__)

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass(slots=True)
class ModelInputs:
    input_ids: torch.Tensor  # [num_tokens]
    positions: torch.Tensor  # [num_tokens]
    # [num_logits]: last token of each sampling request, and its drafts (speculation)
    logits_indices: torch.Tensor
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


def lazy_zeros(shape: tuple[int, ...], dtype: torch.dtype) -> torch.Tensor:
    """A zero tensor whose pages the OS maps on first touch. ``torch.zeros`` writes every
    byte at once: a 4 GiB KV pool took a second of a cold start. numpy's zeros come from
    ``calloc``, which takes fresh zeroed pages for large sizes without writing them."""
    itemsize = torch.empty((), dtype=dtype).element_size()
    raw = np.zeros(shape, dtype={1: np.int8, 2: np.int16, 4: np.int32, 8: np.int64}[itemsize])
    return torch.from_numpy(raw).view(dtype)


class ModelRunner:
    def __init__(
        self,
        model_config: ModelConfig,
        weights: Callable[[], Iterator[tuple[str, torch.Tensor]]],
        config: EngineConfig,
        source: Path | None = None,
        tp: TensorParallelGroup | None = None,
    ) -> None:
        """``source``: the checkpoint's file or folder, which keys the prepared-weights cache
        (None: no cache, e.g. weights built in memory). ``tp``: a worker's tensor-parallel
        group; with ``config.tensor_parallel_size`` > 1 and none given, this runner is rank 0
        and starts the workers (``heron.distributed``)."""
        self.model_config = model_config
        self.config = config
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        self.dtype = _DTYPES[config.dtype]
        self.tp = tp
        built_config = model_config
        if config.tensor_parallel_size > 1:
            self.tp, built_config, weights = self._start_tensor_parallel(weights, source)
            source = None  # the prepared-weights cache holds whole models only
        self.model = build_model(built_config)
        self.kv_dtype = _DTYPES[config.cache.dtype]
        self.kernels = self._kernels(config)
        self.quantization = self._prepare_weights(weights, config, source)
        self.model.eval()
        if self.tp is not None:
            shard.add_all_reduces(self.model, self.tp.all_reduce)
            if self.tp.rank == 0:
                self.tp.wait_loaded()
        # Adapters (EngineConfig.lora): the adaptable linears become LoRALinears here.
        self.lora: LoRAManager | None = None
        if config.lora is not None:
            self.lora = LoRAManager(self.model, model_config, config.lora, self.kernels)
        backend = config.attention_backend
        if backend == "auto":
            usable = self.kernels is not None and self.kv_dtype in CACHE_DTYPES
            backend = "cpu" if usable else "torch"
        self.backend = get_attention_backend(backend)
        self.block_size = config.cache.block_size
        self.num_blocks = plan_num_blocks(model_config, config)
        c = built_config  # this rank's KV heads; the block count is the same on every rank
        # [num_layers, K/V, num_blocks, block_size, num_kv_heads, head_dim]
        self.kv_caches = lazy_zeros(
            (
                c.num_hidden_layers,
                2,
                self.num_blocks,
                self.block_size,
                c.num_key_value_heads,
                c.head_dim,
            ),
            self.kv_dtype,
        )
        # The fused decode path holds views of these caches: bind it to each new cache. It
        # runs every layer in one call, with no place for tensor parallelism's all-reduces.
        if self.tp is None:
            self.model.fused = bind_fused_decoder(
                self.model, self.kv_caches, self.backend, self.kernels
            )
        if self.lora is not None:  # adapted steps stay fused: the stack holds the slots
            self.lora.bind(self.model.fused)
        self.sampler = Sampler(c.vocab_size)
        self.sampler.seed(config.seed)
        self.rejection = RejectionSampler(self.sampler)
        # Called with (sampled rows, logits [num_sampled, vocab]) each step; parity tests use it.
        self.logits_hook: Callable[[list[ScheduledRequest], torch.Tensor], None] | None = None

    def _start_tensor_parallel(
        self, weights: Callable[[], Iterator[tuple[str, torch.Tensor]]], source: Path | None
    ) -> tuple[TensorParallelGroup, ModelConfig, Callable[[], Iterator[tuple[str, torch.Tensor]]]]:
        """(group, this rank's model config, this rank's weight stream). Rank 0 (no group
        yet) starts the workers. Raises ValueError when the model cannot be split so."""
        config = self.config
        shard.check_shardable(self.model_config, config)
        tp = self.tp
        if tp is None:
            if source is None:
                raise ValueError("tensor parallelism needs a checkpoint path to give the workers")
            tp = TensorParallelGroup.launch(source, config)
        n = config.tensor_parallel_size
        mine = shard.shard_weights(weights, self.model_config, tp.rank, n)
        return tp, shard.shard_config(self.model_config, n), mine

    def _prepare_weights(
        self,
        weights: Callable[[], Iterator[tuple[str, torch.Tensor]]],
        config: EngineConfig,
        source: Path | None,
    ) -> dict[str, int]:
        """Load, cast and quantize the model's weights, or map the copy prepared the first
        time from ``source`` (``weight_cache``). Mutates ``self.model``; returns how many
        linears got each kind."""
        key = None
        if source is not None:
            key = weight_cache.cache_key(source, config.dtype, config.quantization, self.kernels)
        if key is not None:
            self.model.to(self.dtype)  # the buffers (rotary tables), as the full path casts them
            counts = weight_cache.load(self.model, key, self.kernels)
            if counts is not None:
                return counts
        self.model.load_weights(weights())
        self.model.to(self.dtype)
        counts = apply_quantization(self.model, config.quantization, self.kernels)
        if key is not None:
            weight_cache.save(self.model, key, counts)
        return counts

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
        logits_indices: list[int] = []
        sampled: list[ScheduledRequest] = []
        bs = self.block_size
        num_decodes = 0
        prompt_plan = PromptLogprobsPlan()
        for s in order:
            start, n = s.num_computed_tokens, s.num_scheduled_tokens
            num_decodes += n == 1
            if s.request.needs_prompt_logprobs:
                prompt_plan.add(s, len(ids))
            drafts = s.spec_token_ids
            ids.extend(s.request.all_token_ids[start : start + n - len(drafts)])
            ids.extend(drafts)
            pos = np.arange(start, start + n, dtype=np.int64)
            table = np.asarray(s.block_ids, dtype=np.int64)
            positions.append(pos)
            slots.append(table[pos // bs] * bs + pos % bs)
            query_lens.append(n)
            context_lens.append(start + n)
            tables.append(s.block_ids)
            if s.sample:
                # the last known token's row, then one row per draft (verification)
                logits_indices.extend(range(len(ids) - 1 - len(drafts), len(ids)))
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
        """Run the step's forward and sample. Writes KV into the cache (rejected drafts'
        rows too: they lie past what the scheduler counts as computed). Returns the sampling
        rows (scheduled requests whose chunk reached their end) and one token per row (a run
        per row when drafts were verified), with the prompt scores of the requests that
        asked for them."""
        inputs = self.prepare_inputs(out)
        if self.tp is not None:  # the workers run this forward with us
            self.tp.send_step(pack_step(inputs.input_ids, inputs.positions, inputs.attention))
        metadata = self.backend.prepare_metadata(inputs.attention)
        verify = any(s.spec_token_ids for s in inputs.sampled)
        if verify:
            batch = self.rejection.prepare(inputs.sampled)
        else:
            batch = self.sampler.prepare([s.request for s in inputs.sampled])
        lora: AbstractContextManager[None] = nullcontext()
        if self.lora is not None:
            lora = self.lora.active(inputs.lora)
        try:
            with lora:
                hidden = self.model(
                    inputs.input_ids, inputs.positions, self.kv_caches, self.backend, metadata
                )
        except Exception:
            if self.tp is not None:  # the workers wait in this step's collectives for good
                self.tp.broken = self.tp.broken or "a forward failed on rank 0; restart the engine"
            raise
        prompt = inputs.prompt_logprobs.score(hidden, self.model.compute_logits)
        if not inputs.sampled:
            return [], SamplerOutput([], [], prompt)
        logits = self.model.compute_logits(hidden.index_select(0, inputs.logits_indices))
        if verify:
            sampled = self.rejection.sample(logits, inputs.sampled, batch)
            sampled.prompt_logprobs = prompt
            return inputs.sampled, sampled
        if self.logits_hook is not None:
            self.logits_hook(inputs.sampled, logits)
        sampled = self.sampler.sample(logits, batch)
        sampled.prompt_logprobs = prompt
        return inputs.sampled, sampled
