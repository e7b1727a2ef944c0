"""Grammar compilation off the engine's step loop, cached by constraint.

The engine core owns one ``GrammarCompiler``. ``submit`` hands a constraint to a worker
thread (llguidance releases the GIL while it compiles) and returns a future of a fresh
matcher; the core admits the request to the scheduler once the future is done, so a slow
grammar never stalls the step loop. Compiled matchers are kept by the constraint's digest
(LRU): a second request with the same schema gets a copy of the compiled one at once.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from concurrent.futures import Future, ThreadPoolExecutor

import llguidance

from heron.structured.grammar import parser_limits
from heron.structured.params import StructuredOutputsParams

logger = logging.getLogger(__name__)

CACHE_SIZE = 256


class GrammarCompiler:
    """Compiles constraints against one model's tokenizer.

    ``tokenizer_json`` is the HF ``tokenizers`` JSON of the model's vocabulary and
    ``vocab_size`` the width of the logits (it may exceed the tokenizer's). The llguidance
    tokenizer is built on the worker thread for the first constraint, not at construction:
    building it holds the GIL for about 0.45 s (SmolLM2's vocabulary), which at engine start
    delayed every model's readiness, used or not.
    """

    def __init__(self, tokenizer_json: str, vocab_size: int, eos_token_ids: Iterable[int]) -> None:
        self.vocab_size = vocab_size
        self._eos = sorted(eos_token_ids)
        self._pool = ThreadPoolExecutor(1, thread_name_prefix="heron-grammar")
        self._cache: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()
        self._lock = threading.Lock()
        self._tokenizer_json = tokenizer_json
        self._tokenizer: llguidance.LLTokenizer | None = None  # built on the worker thread
        self.compile_seconds: list[float] = []  # per cache miss, for the benchmark

    def _grammar_tokenizer(self) -> llguidance.LLTokenizer:
        """The llguidance tokenizer, built on first use (only the worker thread calls it)."""
        if self._tokenizer is None:
            t0 = time.perf_counter()
            self._tokenizer = llguidance.LLTokenizer(
                self._tokenizer_json, n_vocab=self.vocab_size, eos_token=self._eos or None
            )
            logger.info("grammar tokenizer ready in %.2f s", time.perf_counter() - t0)
        return self._tokenizer

    def submit(self, params: StructuredOutputsParams) -> Future[llguidance.LLMatcher]:
        """A future of a new matcher for ``params``, in its start state. The future raises
        ValueError when the constraint does not compile (or exceeds the parser limits)."""
        return self._pool.submit(self._matcher, params)

    def _matcher(self, params: StructuredOutputsParams) -> llguidance.LLMatcher:
        key = params.key
        with self._lock:
            template = self._cache.get(key)
            if template is not None:
                self._cache.move_to_end(key)
        if template is None:
            t0 = time.perf_counter()
            template = llguidance.LLMatcher(
                self._grammar_tokenizer(),
                params.to_grammar(),
                log_level=0,
                limits=parser_limits(),
            )
            if template.is_error():
                raise ValueError(f"invalid {params.kind} constraint: {template.get_error()}")
            # A lexer built lazily pays for its grammar on the first mask: pay it here, on
            # this thread rather than the step loop, and refuse a grammar that fails there.
            template.compute_bitmask()
            self.compile_seconds.append(time.perf_counter() - t0)
            if template.is_error():
                raise ValueError(
                    f"the {params.kind} constraint is too complex: {template.get_error()}"
                )
            with self._lock:
                self._cache[key] = template
                while len(self._cache) > CACHE_SIZE:
                    self._cache.popitem(last=False)
        return template.deep_copy()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
