"""The streaming engine in process: ``add_request`` / ``step`` / ``abort``.

It is the same pair the server runs across two processes: an ``EngineCore`` (schedule, one
batched forward, sample; token ids only) and an ``OutputProcessor`` (n > 1 fan-out,
detokenization, stop strings, logprob text), here called directly instead of over a pipe.
"""

from __future__ import annotations

import os

from heron.config import EngineConfig
from heron.engine.core import EngineCore
from heron.engine.output_processor import OutputProcessor
from heron.kvcache import KVCacheManager
from heron.loader import load_checkpoint
from heron.lora.request import LoRARequest
from heron.outputs import RequestOutput
from heron.runner import ModelRunner
from heron.sampling_params import SamplingParams
from heron.scheduler import Scheduler
from heron.tokenizer import Tokenizer


class LLMEngine:
    """``model_path`` is a resolved checkpoint: a GGUF file or an HF directory (front doors
    resolve names with ``heron.store.resolve.resolve_model``)."""

    def __init__(self, model_path: str, config: EngineConfig | None = None) -> None:
        if not os.path.exists(model_path):
            raise FileNotFoundError(f"no checkpoint at {model_path!r}")
        self.config = config or EngineConfig()
        self.checkpoint = load_checkpoint(model_path)
        self.model_config = self.checkpoint.config
        self.tokenizer = Tokenizer.from_checkpoint(self.checkpoint)
        self.core = EngineCore(
            self.checkpoint,
            self.config,
            self.tokenizer.eos_token_ids,
            self.tokenizer.backend.to_str(),
        )
        self.output_processor = OutputProcessor(self.tokenizer)

    # the core's parts, for tests and tools that look inside
    @property
    def runner(self) -> ModelRunner:
        return self.core.runner

    @property
    def scheduler(self) -> Scheduler:
        return self.core.scheduler

    @property
    def kv_manager(self) -> KVCacheManager:
        return self.core.kv_manager

    @property
    def max_model_len(self) -> int:
        return self.core.max_model_len

    @property
    def eos_token_ids(self) -> frozenset[int]:
        return self.core.eos_token_ids

    # ---------------------------------------------------------------- requests
    def add_request(
        self,
        request_id: str,
        prompt: str | list[int],
        params: SamplingParams | None = None,
        priority: int = 0,
        cache_salt: str | None = None,
        lora_request: LoRARequest | None = None,
    ) -> None:
        """Validate and queue a request (all its choices, or none). Raises ValueError for
        bad input (an empty or over-long prompt, token ids outside the vocabulary, an id that
        collides with a live request, a bad adapter: ``heron.lora.LoRAError``)."""
        params = params or SamplingParams()
        if params.structured_outputs is not None:
            params.structured_outputs.check()
        if isinstance(prompt, str):
            text: str | None = prompt
            token_ids = self.tokenizer.encode(prompt)
        else:
            text, token_ids = None, list(prompt)
        engine_requests = self.output_processor.add_request(
            request_id,
            text,
            token_ids,
            params,
            priority=priority,
            cache_salt=cache_salt,
            cumulative=True,
            lora_request=lora_request,
        )
        try:
            for req in engine_requests:
                self.core.add_request(req)
        except Exception:
            self.abort(request_id)
            raise

    def abort(self, request_id: str) -> None:
        """Abort a request and all its choices; their KV blocks are freed at once."""
        self.core.abort_requests(self.output_processor.abort_request(request_id))

    def has_unfinished_requests(self) -> bool:
        return self.core.has_unfinished_requests()

    @property
    def num_unfinished_requests(self) -> int:
        return self.output_processor.num_requests

    # -------------------------------------------------------------------- step
    def step(self) -> list[RequestOutput]:
        """Run one engine step; return the outputs of requests that advanced (cumulative
        text and token ids). Finished requests are reported once, then forgotten."""
        outputs = self.core.step()
        for rejected in self.core.take_rejected():
            self.abort(self.output_processor.request_of(rejected.request_id) or "")
            raise ValueError(rejected.message)
        processed = self.output_processor.process_outputs(outputs)
        if processed.to_abort:  # stopped by a stop string
            self.core.abort_requests(processed.to_abort)
        return [self.output_processor.make_request_output(rid) for rid in processed.advanced]
