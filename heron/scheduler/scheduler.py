"""Continuous batching over one invariant.

NOTE on the algorithm: there is no prefill phase and no decode phase. Every request has
``num_computed_tokens`` and ``num_tokens``; each step tops requests up towards ``num_tokens``
within ``max_num_batched_tokens``, running requests first (oldest first), then waiting ones.
A prompt longer than the budget (or than ``long_prefill_token_threshold``) is thus prefilled
in chunks while other requests keep decoding; a prefix-cache hit starts a request with
``num_computed_tokens > 0``; and preemption resets it to 0 so that it is recomputed.
"""

from __future__ import annotations

from collections.abc import Iterable

from heron.config import SchedulerConfig
from heron.kvcache import KVCacheBlock, KVCacheManager
from heron.request import Request, RequestStatus
from heron.scheduler.output import ScheduledRequest, SchedulerOutput


class Scheduler:
    def __init__(
        self, config: SchedulerConfig, kv_manager: KVCacheManager, max_loras: int | None = None
    ) -> None:
        self.config = config
        self.kv = kv_manager
        # LoRA: running requests use at most this many distinct adapters (the slot table).
        self.max_loras = max_loras
        self.waiting: list[Request] = []
        self.running: list[Request] = []
        self.requests: dict[str, Request] = {}
        self.num_preemptions = 0

    # ----------------------------------------------------------------- admission
    def add_request(self, request: Request) -> None:
        """Queue a new request (status WAITING). Raises if the id is already live."""
        if request.request_id in self.requests:
            raise ValueError(f"request id {request.request_id!r} is already in use")
        self.requests[request.request_id] = request
        self.waiting.append(request)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    @property
    def num_waiting(self) -> int:
        return len(self.waiting)

    @property
    def num_running(self) -> int:
        return len(self.running)

    # ------------------------------------------------------------------ schedule
    def schedule(self) -> SchedulerOutput:
        """Pick this step's work. Mutates request statuses, ``num_computed_tokens`` of newly
        admitted requests (prefix hits), the running/waiting queues and KV block tables.
        ``num_computed_tokens`` of scheduled requests is advanced later, in
        ``update_from_output``."""
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        if self.config.policy == "priority":
            # The budget goes to the most urgent first; the victim is taken from the tail.
            self.running.sort(key=lambda r: (r.priority, r.arrival_time))
        chunk = self.config.long_prefill_token_threshold

        i = 0
        while i < len(self.running) and budget > 0:
            req = self.running[i]
            num_new = self._num_new_tokens(req, req.num_computed_tokens, budget, chunk)
            drafts = self._fitting_drafts(req, num_new, budget)
            while not self.kv.allocate_slots(
                req.request_id,
                req.all_token_ids,
                req.num_computed_tokens,
                num_new,
                extra_key=req.cache_salt,  # its blocks' key (salt, adapter) never changes
                num_lookahead_tokens=len(drafts),
            ):
                if drafts:  # never preempt anyone for a guess
                    drafts = []
                    continue
                victim = self._pick_victim(i)
                self._preempt(victim)
                out.preempted_ids.append(victim.request_id)
                if victim is req:
                    break
            else:
                self._emit(out, req, req.num_computed_tokens, num_new, drafts)
                budget -= num_new + len(drafts)
                i += 1

        if not out.preempted_ids:
            self._admit_waiting(out, budget, chunk)
        return out

    def _admit_waiting(self, out: SchedulerOutput, budget: int, chunk: int) -> None:
        idx = 0
        loras = self._running_loras()
        while budget > 0 and len(self.running) < self.config.max_num_seqs:
            idx = self._next_waiting(idx)
            if idx >= len(self.waiting):
                return
            req = self.waiting[idx]
            if loras is not None and not self._lora_fits(req, loras):
                idx += 1
                continue
            parent = req.fork_parent
            if parent is not None and not parent.is_finished:
                if parent.status != RequestStatus.RUNNING or (
                    parent.num_computed_tokens < parent.num_prompt_tokens
                ):
                    # A sibling of an n > 1 group waits until its parent's prompt KV exists.
                    idx += 1
                    continue
            computed_blocks: list[KVCacheBlock] = []
            num_hit = 0
            forked = False
            if parent is not None and parent.status == RequestStatus.RUNNING:
                num_hit = self.kv.fork(
                    parent.request_id,
                    req.request_id,
                    min(parent.num_computed_tokens, req.num_tokens - 1),
                )
                forked = True
            elif not req.needs_prompt_logprobs:
                # (a request that wants prompt logprobs computes every prompt position)
                computed_blocks, num_hit = self.kv.get_computed_blocks(
                    req.request_id, req.all_token_ids, req.num_prompt_tokens, req.cache_salt
                )
            num_new = self._num_new_tokens(req, num_hit, budget, chunk)
            base = num_hit if forked else 0
            if not self.kv.allocate_slots(
                req.request_id,
                req.all_token_ids,
                base,
                num_new,
                None if forked else computed_blocks,
                req.cache_salt,
                None if forked else num_hit,
            ):
                if forked:
                    self.kv.free(req.request_id)
                return
            del self.waiting[idx]
            req.fork_parent = None
            if req.status == RequestStatus.WAITING:
                req.num_cached_tokens = num_hit
            req.status = RequestStatus.RUNNING
            req.num_computed_tokens = num_hit
            self.running.append(req)
            if loras is not None and req.lora_request is not None:
                loras.add(req.lora_request.int_id)
            self._emit(out, req, num_hit, num_new)
            budget -= num_new

    def _running_loras(self) -> set[int] | None:
        """The adapters running requests use (their slots), or None without LoRA."""
        if self.max_loras is None:
            return None
        return {r.lora_request.int_id for r in self.running if r.lora_request is not None}

    def _lora_fits(self, req: Request, loras: set[int]) -> bool:
        """Whether ``req``'s adapter has a slot this step. Once one waits for a slot, no
        later request brings in a new adapter or more of a running one (-1 marks it), so the
        running adapters drain and a slot frees: nothing waits forever."""
        lora = req.lora_request
        if lora is None:
            return True
        assert self.max_loras is not None
        if -1 not in loras and (lora.int_id in loras or len(loras) < self.max_loras):
            return True
        loras.add(-1)
        return False

    def _next_waiting(self, start: int) -> int:
        """Index of the next waiting request to consider: queue order for FCFS; for the
        priority policy the waiting list is kept sorted by (priority, arrival)."""
        if self.config.policy == "priority" and start == 0:
            self.waiting.sort(key=lambda r: (r.priority, r.arrival_time))
        return start

    def _num_new_tokens(self, req: Request, num_computed: int, budget: int, chunk: int) -> int:
        num_new = req.num_tokens - num_computed
        if chunk:
            num_new = min(num_new, chunk)
        return min(num_new, budget)

    @staticmethod
    def _fitting_drafts(req: Request, num_new: int, budget: int) -> list[int]:
        """The request's speculative drafts that go with this step: only when its known
        tokens all fit (drafts follow them), and only as many as the budget leaves."""
        if not req.spec_token_ids or req.num_computed_tokens + num_new != req.num_tokens:
            return []
        return req.spec_token_ids[: max(budget - num_new, 0)]

    def _emit(
        self,
        out: SchedulerOutput,
        req: Request,
        num_computed: int,
        num_new: int,
        drafts: list[int] | None = None,
    ) -> None:
        drafts = drafts or []
        out.scheduled.append(
            ScheduledRequest(
                request=req,
                num_computed_tokens=num_computed,
                num_scheduled_tokens=num_new + len(drafts),
                block_ids=self.kv.get_block_ids(req.request_id),
                sample=num_computed + num_new == req.num_tokens,
                spec_token_ids=drafts,
            )
        )
        out.num_scheduled_tokens += num_new + len(drafts)

    def _pick_victim(self, first_unscheduled: int) -> Request:
        """The lowest-priority running request not yet scheduled this step: the newest for
        FCFS, the largest (priority, arrival) for the priority policy."""
        candidates = self.running[first_unscheduled:]
        if self.config.policy == "priority":
            return max(candidates, key=lambda r: (r.priority, r.arrival_time))
        return candidates[-1]

    def _preempt(self, req: Request) -> None:
        # What it computed stays cached (its last partial block as a tail) for its return.
        self.kv.free(req.request_id, req.all_token_ids, req.num_computed_tokens)
        self.running.remove(req)
        req.status = RequestStatus.PREEMPTED
        req.num_computed_tokens = 0
        req.spec_token_ids = []
        req.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.insert(0, req)

    # -------------------------------------------------------------------- update
    def update_from_output(
        self, out: SchedulerOutput, sampled: dict[str, list[int]]
    ) -> list[Request]:
        """Advance computed counts, append each sampling row's tokens (its accepted drafts,
        then the token the runner sampled) and apply token-level stops (EOS, stop token ids,
        max_tokens) token by token, dropping whatever follows a stop. Rejected drafts roll
        back: ``num_computed_tokens`` counts only the accepted ones, so their KV slots are
        overwritten later. Finished requests release their blocks and are returned; the
        caller applies stop strings and calls ``finish_requests``."""
        finished: list[Request] = []
        for s in out.scheduled:
            req = s.request
            if req.is_finished:  # aborted between schedule and update
                continue
            num_known = s.num_computed_tokens + s.num_known_tokens
            req.num_computed_tokens = num_known
            if not s.sample:
                continue
            req.spec_token_ids = []
            tokens = sampled[req.request_id]
            status = None
            for token in tokens:
                req.append_output_token(token)
                status = self._check_stop(req, token)
                if status is not None:
                    break
            # The KV of every accepted draft is computed; the last token's is not.
            req.num_computed_tokens = min(num_known + len(tokens) - 1, req.num_tokens)
            if len(tokens) > 1:
                self.kv.cache_computed(req.request_id, req.all_token_ids, req.num_computed_tokens)
            if status is not None:
                self._finish(req, status)
                finished.append(req)
        return finished

    def _check_stop(self, req: Request, token: int) -> RequestStatus | None:
        params = req.sampling_params
        if req.num_output_tokens >= params.min_tokens:
            if not params.ignore_eos and token in req.eos_token_ids:
                return RequestStatus.FINISHED_STOPPED
            if token in params.stop_token_ids:
                req.stop_reason = token
                return RequestStatus.FINISHED_STOPPED
        if req.num_output_tokens >= req.max_tokens:
            return RequestStatus.FINISHED_LENGTH
        return None

    def finish_requests(self, request_ids: Iterable[str], status: RequestStatus) -> None:
        """Finish (e.g. abort) requests wherever they are; their blocks are freed at once."""
        for rid in request_ids:
            req = self.requests.get(rid)
            if req is None or req.is_finished:
                continue
            if req in self.running:
                self.running.remove(req)
            elif req in self.waiting:
                self.waiting.remove(req)
            self._finish(req, status)

    def _finish(self, req: Request, status: RequestStatus) -> None:
        req.status = status
        self.kv.free(req.request_id, req.all_token_ids, req.num_computed_tokens)
        if req in self.running:
            self.running.remove(req)
        self.requests.pop(req.request_id, None)
