"""The ``draft`` proposer: a small model with the target's vocabulary guesses ``k`` tokens,
greedily, with its own paged KV cache, in the engine's process.

It reuses Heron's pieces rather than a second engine: a ``ModelRunner`` for the draft model,
a ``KVCacheManager`` (no prefix caching) for its blocks, and ``SchedulerOutput`` rows for its
forwards. Per request it keeps a private ``Request`` (the *shadow*) whose tokens are the
request's tokens followed by the drafts it last proposed, and how many of them the draft
cache holds. Each ``propose``:

    request  | p p p p o o | a a t |          a a: drafts the target accepted, t: its own token
    shadow   | p p p p o o | a a x x |        x: rejected drafts (KV computed up to the last)
                           ^ last real length   ^ common prefix ends after "a a"

1. catches up: the shadow takes the request's new tokens and its computed count rolls back
   to the common prefix of the new tokens and the old drafts (accepted drafts keep their KV;
   rejected ones are overwritten), then the uncomputed tokens are fed;
2. drafts: the forward that feeds the last real token samples the first draft, then ``k - 1``
   single-token forwards sample the rest, each batched across requests.

A request whose blocks do not fit the draft pool gets no (or fewer) drafts that step; the
engine decodes it without speculation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from heron.config import EngineConfig, ModelConfig
from heron.kvcache import KVCacheManager
from heron.kvcache.plan import plan_max_model_len, plan_num_blocks
from heron.loader import load_checkpoint
from heron.proposer.base import MAX_SPECULATIVE_TOKENS
from heron.request import Request
from heron.runner import ModelRunner
from heron.sampling_params import SamplingParams
from heron.scheduler.output import ScheduledRequest, SchedulerOutput

if TYPE_CHECKING:
    from heron.proposer.base import SpeculativeConfig

_GREEDY = SamplingParams(temperature=0.0, max_tokens=None)


@dataclass(slots=True)
class DraftState:
    """The draft side of one request."""

    shadow: Request  # all_token_ids: the request's tokens, then the last drafts
    num_real: int  # the request's length when the drafts were made
    num_computed: int = 0  # shadow tokens whose KV is in the draft cache
    failed: bool = False  # the pool could not hold its next tokens this step

    @property
    def num_tokens(self) -> int:
        return len(self.shadow.all_token_ids)

    @property
    def drafts(self) -> list[int]:
        return self.shadow.all_token_ids[self.num_real :]


def draft_engine_config(engine_config: EngineConfig, num_blocks: int | None) -> EngineConfig:
    """The target's config for the draft model: no prefix caching (drafts are never shared),
    no speculation or adapters of its own, and ``num_blocks`` KV blocks when given."""
    cache = dataclasses.replace(engine_config.cache, enable_prefix_caching=False)
    if num_blocks is not None:
        cache = dataclasses.replace(cache, num_blocks=num_blocks)
    return dataclasses.replace(engine_config, cache=cache, speculative=None, lora=None)


class DraftProposer:
    """Greedy drafts from a small model (see the module docstring)."""

    def __init__(
        self,
        config: SpeculativeConfig,
        engine_config: EngineConfig,
        target_config: ModelConfig | None = None,
    ) -> None:
        """Load ``config.draft_model``. With ``target_config`` (the target model's), check the
        vocabularies match and give the draft pool as many token slots as the target's plus
        room for every running request's drafts; otherwise it gets the target's cache
        budget. Raises ValueError when the vocabularies differ."""
        if config.draft_model is None:
            raise ValueError("speculative method 'draft' needs a draft_model")
        checkpoint = load_checkpoint(config.draft_model)
        try:
            self.model_config = checkpoint.config
            if target_config is not None:
                self.check_target(target_config)
            num_blocks = None
            if target_config is not None:
                bs = engine_config.cache.block_size
                per_request = -(-MAX_SPECULATIVE_TOKENS // bs) + 1
                num_blocks = plan_num_blocks(target_config, engine_config)
                num_blocks += engine_config.scheduler.max_num_seqs * per_request
            self.engine_config = draft_engine_config(engine_config, num_blocks)
            self.runner = ModelRunner(checkpoint.config, checkpoint.weights, self.engine_config)
        finally:
            checkpoint.close()
        self.kv = KVCacheManager(
            self.runner.num_blocks, self.engine_config.cache.block_size, enable_caching=False
        )
        self.max_model_len, _ = plan_max_model_len(self.model_config, self.engine_config)
        self.token_budget = engine_config.scheduler.max_num_batched_tokens
        self.states: dict[str, DraftState] = {}

    def check_target(self, target_config: ModelConfig) -> None:
        """Raise ValueError unless the draft model's vocabulary size is the target's."""
        draft, target = self.model_config.vocab_size, target_config.vocab_size
        if draft != target:
            raise ValueError(
                f"the draft model's vocabulary has {draft} tokens but the target's has "
                f"{target}: a draft model must share the target's tokenizer"
            )

    # ------------------------------------------------------------------ proposer
    def propose(self, requests: Sequence[Request], max_k: Sequence[int]) -> list[list[int]]:
        """Up to ``max_k[i]`` greedy draft tokens for each request (fewer where the draft
        pool or the draft model's context runs out). Mutates the draft cache, its block
        tables and this proposer's per-request state; the requests are only read."""
        drafting: list[tuple[DraftState, int]] = []
        states: list[DraftState | None] = []
        for request, k in zip(requests, max_k, strict=True):
            k = min(k, self.max_model_len - request.num_tokens)
            state = self._sync(request) if k > 0 else None
            states.append(state)
            if state is not None:
                drafting.append((state, k))
        self._draft(drafting)
        return [[] if s is None else s.drafts for s in states]

    def on_finished(self, request: Request) -> None:
        """Free the request's draft blocks and forget it."""
        self.states.pop(request.request_id, None)
        self.kv.free(request.request_id)

    # ------------------------------------------------------------------ internals
    def _sync(self, request: Request) -> DraftState:
        """Bring the request's shadow up to its tokens, dropping the old drafts, and roll the
        computed count back to what the old drafts and the new tokens have in common."""
        rid = request.request_id
        state = self.states.get(rid)
        if state is not None and request.num_tokens < state.num_real:
            self.on_finished(request)  # not the sequence it was drafting for
            state = None
        if state is None:
            shadow = Request(rid, request.prompt_token_ids, _GREEDY)
            state = self.states[rid] = DraftState(shadow, request.num_prompt_tokens)
        tokens = state.shadow.all_token_ids
        new = request.all_token_ids[state.num_real :]
        old = tokens[state.num_real :]
        common = 0
        for a, b in zip(new, old, strict=False):
            if a != b:
                break
            common += 1
        state.num_computed = min(state.num_computed, state.num_real + common)
        del tokens[state.num_real :]
        tokens.extend(new)
        state.num_real = len(tokens)
        state.failed = False
        return state

    def _draft(self, drafting: list[tuple[DraftState, int]]) -> None:
        """Run forwards until each state has its ``k`` drafts or its blocks did not fit.
        Each forward takes every unfinished state's next chunk (catch-up tokens within the
        token budget, or the last draft), shortest first."""
        active = drafting
        while active:
            rows = self._schedule([state for state, _ in active])
            if not rows.scheduled:
                return
            sampled = self._forward(rows)
            for row in rows.scheduled:
                state = self.states[row.request.request_id]
                state.num_computed += row.num_scheduled_tokens
                token = sampled.get(row.request.request_id)
                if token is not None:
                    state.shadow.all_token_ids.append(token)
            active = [(s, k) for s, k in active if not s.failed and len(s.drafts) < k]

    def _schedule(self, states: list[DraftState]) -> SchedulerOutput:
        """One draft forward's rows; a state whose blocks do not fit is marked failed."""
        out = SchedulerOutput()
        budget = self.token_budget
        for state in sorted(states, key=lambda s: s.num_tokens - s.num_computed):
            rid, tokens = state.shadow.request_id, state.shadow.all_token_ids
            num_new = min(state.num_tokens - state.num_computed, budget)
            if num_new <= 0:
                continue  # over this forward's budget: next forward
            if not self.kv.allocate_slots(rid, tokens, state.num_computed, num_new):
                state.failed = True
                continue
            row = ScheduledRequest(
                request=state.shadow,
                num_computed_tokens=state.num_computed,
                num_scheduled_tokens=num_new,
                block_ids=self.kv.get_block_ids(rid),
                sample=state.num_computed + num_new == state.num_tokens,
            )
            out.scheduled.append(row)
            out.num_scheduled_tokens += num_new
            budget -= num_new
        return out

    @torch.inference_mode()
    def _forward(self, out: SchedulerOutput) -> dict[str, int]:
        """Run the draft model over ``out``'s rows (writing their KV) and return the greedy
        next token of each sampling row, by request id."""
        runner = self.runner
        inputs = runner.prepare_inputs(out)
        metadata = runner.backend.prepare_metadata(inputs.attention)
        hidden = runner.model(
            inputs.input_ids, inputs.positions, runner.kv_caches, runner.backend, metadata
        )
        if not inputs.sampled:
            return {}
        logits = runner.model.compute_logits(hidden.index_select(0, inputs.logits_indices))
        tokens: list[int] = logits.argmax(dim=-1).tolist()
        return {row.request.request_id: t for row, t in zip(inputs.sampled, tokens, strict=True)}
