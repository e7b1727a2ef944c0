"""``heron.LLM``: the offline API, in vLLM's conventions."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from typing import Any, TypedDict

from heron.config import CacheConfig, EngineConfig, LoRAConfig, SchedulerConfig
from heron.engine.embedder import EmbeddingEngine, is_embedding_checkpoint
from heron.engine.llm_engine import LLMEngine
from heron.lora.request import LoRARequest
from heron.outputs import RequestOutput
from heron.prompt import ChatRenderer
from heron.proposer.base import SpeculativeConfig
from heron.proposer.options import speculative_from_dict
from heron.sampling_params import SamplingParams
from heron.tokenizer import Tokenizer


class TokensPrompt(TypedDict):
    prompt_token_ids: list[int]


PromptType = str | TokensPrompt
ChatMessage = dict[str, Any]


class LLM:
    """Load a model and generate, or (for an encoder such as BERT) embed.

    ``model`` is a GGUF file or an HF checkpoint directory. The keyword arguments map one to
    one onto ``EngineConfig`` fields (an embedding model uses dtype, quantization, threads,
    max_model_len and max_num_batched_tokens, its padded tokens per forward).
    ``enable_lora`` with ``max_loras``, ``max_lora_rank``, ``max_cpu_loras`` and
    ``lora_dtype`` sets ``EngineConfig.lora`` (see ``heron.config.LoRAConfig``); ``generate``
    then takes adapters.
    ``speculative_config`` is vLLM's: ``{"method": "ngram", "num_speculative_tokens": 4}``
    (or ``"suffix"``, or ``"draft"`` with ``"model"``), or a ``SpeculativeConfig``.
    ``tensor_parallel_size`` splits the model across that many processes
    (``heron.distributed``); ``close()`` stops them.
    """

    def __init__(
        self,
        model: str,
        *,
        max_model_len: int | None = None,
        block_size: int = 8,
        kv_cache_memory_bytes: int = 1 << 30,
        num_kv_blocks: int | None = None,
        enable_prefix_caching: bool = True,
        max_num_batched_tokens: int = 2048,
        max_num_seqs: int = 64,
        long_prefill_token_threshold: int = 0,
        scheduling_policy: str = "fcfs",
        dtype: str = "float32",
        kv_cache_dtype: str = "float32",
        quantization: str | None = None,
        attention_backend: str = "auto",
        num_threads: int | None = None,
        seed: int = 0,
        enable_lora: bool = False,
        max_loras: int = 4,
        max_lora_rank: int = 16,
        max_cpu_loras: int | None = None,
        lora_dtype: str = "auto",
        speculative_config: SpeculativeConfig | Mapping[str, Any] | None = None,
        tensor_parallel_size: int = 1,
    ) -> None:
        lora = (
            LoRAConfig(max_loras, max_lora_rank, max_cpu_loras, lora_dtype) if enable_lora else None
        )
        config = EngineConfig(
            cache=CacheConfig(
                block_size=block_size,
                memory_bytes=kv_cache_memory_bytes,
                num_blocks=num_kv_blocks,
                enable_prefix_caching=enable_prefix_caching,
                dtype=kv_cache_dtype,
            ),
            scheduler=SchedulerConfig(
                max_num_batched_tokens=max_num_batched_tokens,
                max_num_seqs=max_num_seqs,
                long_prefill_token_threshold=long_prefill_token_threshold,
                policy=scheduling_policy,
            ),
            max_model_len=max_model_len,
            dtype=dtype,
            quantization=quantization,
            attention_backend=attention_backend,
            num_threads=num_threads,
            seed=seed,
            lora=lora,
            speculative=(
                speculative_config
                if speculative_config is None or isinstance(speculative_config, SpeculativeConfig)
                else speculative_from_dict(speculative_config)
            ),
            tensor_parallel_size=tensor_parallel_size,
        )
        from heron.store.resolve import resolve_model  # LLM(...) is a front door

        path = resolve_model(model)
        self._embedder = EmbeddingEngine(path, config) if is_embedding_checkpoint(path) else None
        self._engine = LLMEngine(path, config) if self._embedder is None else None
        self._ids = itertools.count()

    @property
    def engine(self) -> LLMEngine:
        """The generation engine. Raises ValueError for an embedding model."""
        if self._engine is None:
            raise ValueError("this model is an embedding model: it does not support generate")
        return self._engine

    def close(self) -> None:
        """Stop the tensor-parallel workers, if any (they also stop when this process
        exits). The engine cannot step afterwards."""
        if self._engine is not None and self._engine.runner.tp is not None:
            self._engine.runner.tp.close()

    def get_tokenizer(self) -> Tokenizer:
        if self._embedder is not None:
            return self._embedder.tokenizer
        return self.engine.tokenizer

    def embed(self, texts: str | Sequence[str], truncate: bool = True) -> list[list[float]]:
        """One embedding per text, in order, from one batched forward (pooled and normalised
        as the checkpoint says). Over-long texts are cut to the context unless ``truncate``
        is false (then ValueError). Raises ValueError for a model that is not an embedding
        model."""
        if self._embedder is None:
            raise ValueError("this model does not support embeddings")
        batch = [texts] if isinstance(texts, str) else list(texts)
        return self._embedder.embed(batch, truncate)

    def generate(
        self,
        prompts: PromptType | Sequence[PromptType],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        priority: Sequence[int] | None = None,
        lora_request: LoRARequest | Sequence[LoRARequest | None] | None = None,
    ) -> list[RequestOutput]:
        """Generate for every prompt, batched; outputs come back in prompt order.
        ``lora_request`` is one adapter for every prompt or one per prompt (None: the base
        model); it needs ``enable_lora=True``. Raises ValueError (``LoRAError``) for a bad
        adapter, and then queues nothing."""
        if isinstance(prompts, str | dict):
            prompts = [prompts]
        prompt_list = list(prompts)
        if isinstance(sampling_params, Sequence):
            if len(sampling_params) != len(prompt_list):
                raise ValueError("sampling_params must be one object or one per prompt")
            params_list = list(sampling_params)
        else:
            params_list = [sampling_params or SamplingParams()] * len(prompt_list)
        if lora_request is None or isinstance(lora_request, LoRARequest):
            loras = [lora_request] * len(prompt_list)
        elif len(lora_request) != len(prompt_list):
            raise ValueError("lora_request must be one adapter or one per prompt")
        else:
            loras = list(lora_request)
        ids: list[str] = []
        try:
            for i, (prompt, params) in enumerate(zip(prompt_list, params_list, strict=True)):
                rid = str(next(self._ids))
                body: str | list[int] = (
                    prompt if isinstance(prompt, str) else prompt["prompt_token_ids"]
                )
                self.engine.add_request(
                    rid, body, params, priority[i] if priority else 0, lora_request=loras[i]
                )
                ids.append(rid)
        except Exception:
            for rid in ids:  # all or nothing: do not leave earlier prompts queued
                self.engine.abort(rid)
            raise
        return self._run(ids)

    def chat(
        self,
        messages: list[ChatMessage] | list[list[ChatMessage]],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
        add_generation_prompt: bool = True,
        chat_template_kwargs: dict[str, Any] | None = None,
        continue_final_message: bool = False,
    ) -> list[RequestOutput]:
        """Apply the model's chat template to each conversation, then generate.
        ``continue_final_message`` continues each conversation's final assistant message
        instead of starting a new reply."""
        conversations = messages if messages and isinstance(messages[0], list) else [messages]
        renderer = ChatRenderer(self.engine.tokenizer)
        prompts: list[PromptType] = []
        for conv in conversations:
            ids = renderer.encode(
                conv,  # type: ignore[arg-type]
                add_generation_prompt=add_generation_prompt,
                continue_final_message=continue_final_message,
                **(chat_template_kwargs or {}),
            )
            prompts.append(TokensPrompt(prompt_token_ids=ids))
        return self.generate(prompts, sampling_params)

    def _run(self, ids: list[str]) -> list[RequestOutput]:
        final: dict[str, RequestOutput] = {}
        wanted = set(ids)
        while self.engine.has_unfinished_requests():
            for out in self.engine.step():
                if out.finished and out.request_id in wanted:
                    final[out.request_id] = out
        return [final[i] for i in ids]
