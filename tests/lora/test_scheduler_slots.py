"""The scheduler keeps the adapters of running requests within ``max_loras`` (the slot
table): a request whose adapter has no slot waits, base requests do not, and once one waits
no later request takes a slot before it, so it runs as soon as a running adapter drains."""

from __future__ import annotations

from heron.config import SchedulerConfig
from heron.kvcache import KVCacheManager
from heron.lora import LoRARequest
from heron.request import Request, RequestStatus
from heron.sampling_params import SamplingParams
from heron.scheduler import Scheduler

A, B, C = (LoRARequest(n, i + 1, f"/adapters/{n}") for i, n in enumerate("abc"))


def make(max_loras: int | None) -> Scheduler:
    kv = KVCacheManager(64, 4, enable_caching=True, hash_seed=b"test")
    return Scheduler(SchedulerConfig(max_num_batched_tokens=256), kv, max_loras)


def req(rid: str, lora: LoRARequest | None, max_tokens: int = 4) -> Request:
    return Request(
        request_id=rid,
        prompt_token_ids=[1, 2, 3],
        sampling_params=SamplingParams(max_tokens=max_tokens),
        eos_token_ids=frozenset({999}),
        max_tokens=max_tokens,
        lora_request=lora,
    )


def scheduled(s: Scheduler) -> list[str]:
    """One step: schedule, then advance each request as a sampled token 7 would."""
    out = s.schedule()
    for x in out.scheduled:
        req = x.request
        req.num_computed_tokens = x.num_computed_tokens + x.num_scheduled_tokens
        if x.sample:
            req.append_output_token(7)
            if req.num_output_tokens >= req.max_tokens:
                s.finish_requests([req.request_id], RequestStatus.FINISHED_LENGTH)
    return [x.request.request_id for x in out.scheduled]


def test_a_full_slot_table_holds_new_adapters_back_but_not_the_base() -> None:
    s = make(max_loras=2)
    for rid, lora, n in [("a1", A, 2), ("b1", B, 4), ("c1", C, 4), ("a2", A, 4), ("x", None, 4)]:
        s.add_request(req(rid, lora, n))
    # c1 has no slot; a2 would fit (a is running) but waits behind c1; the base runs
    assert scheduled(s) == ["a1", "b1", "x"]
    assert [r.request_id for r in s.waiting] == ["c1", "a2"]
    scheduled(s)  # a1 finishes (2 tokens): its slot frees
    assert s.requests.get("a1") is None
    assert scheduled(s) == ["b1", "x", "c1"]
    assert [r.request_id for r in s.waiting] == ["a2"]  # b and c hold both slots
    while s.has_unfinished():
        scheduled(s)
    assert all(r.status != RequestStatus.WAITING for r in s.requests.values())


def test_without_lora_nothing_is_held_back() -> None:
    s = make(max_loras=None)
    for rid, lora in [("a", A), ("b", B), ("c", C)]:
        s.add_request(req(rid, lora))
    assert scheduled(s) == ["a", "b", "c"]
