"""Prometheus metrics under the ``heron:`` prefix, in a registry of the server's own."""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from heron.engine.protocol import EngineStats

if TYPE_CHECKING:
    from heron.engine.replica_member import ReplicaStatus

_LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
    60.0,
    120.0,
)
_ITL_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56)


class Metrics:
    """Labelled by model name; gauges mirror the engines' latest stats (zero once a model is
    unloaded), counters advance by each engine's own deltas, so they never go backwards when
    models load and unload."""

    def __init__(self, model_names: list[str] | None = None) -> None:
        self.registry = CollectorRegistry()
        labels = ["model_name"]
        r = self.registry

        def gauge(name: str, doc: str) -> Gauge:
            return Gauge(f"heron:{name}", doc, labels, registry=r)

        def counter(name: str, doc: str, extra: list[str] | None = None) -> Counter:
            return Counter(f"heron:{name}", doc, labels + (extra or []), registry=r)

        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return Histogram(f"heron:{name}", doc, labels, buckets=buckets, registry=r)

        self.running = gauge("num_requests_running", "Requests in the running batch.")
        self.waiting = gauge("num_requests_waiting", "Requests waiting to be scheduled.")
        self.kv_usage = gauge("kv_cache_usage_perc", "Fraction of KV cache blocks in use (0-1).")
        self.prefix_queries = counter(
            "prefix_cache_queries", "Prompt tokens looked up in the prefix cache."
        )
        self.prefix_hits = counter(
            "prefix_cache_hits", "Prompt tokens served from the prefix cache."
        )
        self.preemptions = counter("num_preemptions", "Requests preempted for recompute.")
        self.prompt_tokens = counter("prompt_tokens", "Prompt tokens of finished requests.")
        self.generation_tokens = counter(
            "generation_tokens", "Generated tokens of finished requests."
        )
        self.request_success = counter(
            "request_success", "Finished requests by finish reason.", ["finished_reason"]
        )
        self.spec_drafts = counter(
            "spec_decode_num_drafts", "Speculative verifications of one request's drafts."
        )
        self.spec_draft_tokens = counter(
            "spec_decode_num_draft_tokens", "Draft tokens verified (speculative decoding)."
        )
        self.spec_accepted = counter(
            "spec_decode_num_accepted_tokens", "Draft tokens accepted (speculative decoding)."
        )
        self.spec_accepted_per_pos = counter(
            "spec_decode_num_accepted_tokens_per_pos",
            "Draft tokens accepted, by position in the draft (0 first).",
            ["position"],
        )
        self.ttft = hist("time_to_first_token_seconds", "Time to first token.", _LATENCY_BUCKETS)
        self.itl = hist("inter_token_latency_seconds", "Time between output chunks.", _ITL_BUCKETS)
        self.e2e = hist(
            "e2e_request_latency_seconds", "End-to-end request latency.", _LATENCY_BUCKETS
        )
        self.lora_loaded = gauge(
            "lora_adapters_loaded", "LoRA adapters served on the model (--lora, loaded, stored)."
        )
        self.lora_requests = counter(
            "lora_requests", "Finished requests per LoRA adapter.", ["adapter"]
        )
        self._last: dict[tuple[str, int], EngineStats] = {}  # (model, engine id) -> stats
        self._init_replicas()
        self._lora_models: set[str] = set()
        self._gauged: set[str] = set()
        for name in model_names or []:
            self.declare(name)

    def declare(self, model_name: str) -> None:
        """Create every labelled series of a model, so that /metrics lists them before any
        traffic."""
        self._gauged.add(model_name)
        for metric in (
            self.running,
            self.waiting,
            self.kv_usage,
            self.prefix_queries,
            self.prefix_hits,
            self.preemptions,
            self.spec_drafts,
            self.spec_draft_tokens,
            self.spec_accepted,
            self.prompt_tokens,
            self.generation_tokens,
            self.ttft,
            self.itl,
            self.e2e,
        ):
            metric.labels(model_name)

    def update_engines(self, engines: list[tuple[str, int, EngineStats]]) -> None:
        """Mirror each loaded engine's latest snapshot, given as (model name, engine id,
        stats); counters advance by the difference from that engine's previous snapshot."""
        seen: set[str] = set()
        for m, engine_id, stats in engines:
            if m not in self._gauged:
                self.declare(m)
            seen.add(m)
            self.running.labels(m).set(stats.num_running)
            self.waiting.labels(m).set(stats.num_waiting)
            self.kv_usage.labels(m).set(stats.kv_cache_usage)
            last = self._last.get((m, engine_id), EngineStats())
            for counter, new, old in (
                (self.prefix_queries, stats.prefix_cache_queries, last.prefix_cache_queries),
                (self.prefix_hits, stats.prefix_cache_hits, last.prefix_cache_hits),
                (self.preemptions, stats.num_preemptions, last.num_preemptions),
                (self.spec_drafts, stats.spec_num_drafts, last.spec_num_drafts),
                (self.spec_draft_tokens, stats.spec_num_draft_tokens, last.spec_num_draft_tokens),
                (
                    self.spec_accepted,
                    stats.spec_num_accepted_tokens,
                    last.spec_num_accepted_tokens,
                ),
            ):
                if new > old:
                    counter.labels(m).inc(new - old)
            self._per_position(m, stats.spec_accepted_per_pos, last.spec_accepted_per_pos)
            self._last[(m, engine_id)] = stats
        for m in self._gauged - seen:  # unloaded since the last scrape
            self.running.labels(m).set(0)
            self.waiting.labels(m).set(0)
            self.kv_usage.labels(m).set(0)
        self._gauged |= seen
        live = {(m, e) for m, e, _ in engines}
        for key in [k for k in self._last if k not in live]:
            del self._last[key]

    def _per_position(self, model: str, new: list[int], old: list[int]) -> None:
        for pos, count in enumerate(new):
            before = old[pos] if pos < len(old) else 0
            if count > before:
                self.spec_accepted_per_pos.labels(model, str(pos)).inc(count - before)

    def observe_request(
        self,
        model_name: str,
        prompt_tokens: int,
        generation_tokens: int,
        ttft_s: float | None,
        itl_s: list[float],
        e2e_s: float,
        finish_reason: str | None,
    ) -> None:
        """Record one finished (or aborted) request."""
        m = model_name
        self.prompt_tokens.labels(m).inc(prompt_tokens)
        self.generation_tokens.labels(m).inc(generation_tokens)
        self.request_success.labels(m, finish_reason or "abort").inc()
        if ttft_s is not None:
            self.ttft.labels(m).observe(ttft_s)
        for gap in itl_s:
            self.itl.labels(m).observe(gap)
        self.e2e.labels(m).observe(e2e_s)

    def observe_lora(self, model_name: str, adapter: str) -> None:
        """Count one finished (or aborted) request that ran with ``adapter``."""
        self.lora_requests.labels(model_name, adapter).inc()

    def update_adapters(self, counts: dict[str, int]) -> None:
        """Set the adapters served per model name; a model that has none now reads 0."""
        for m in self._lora_models - set(counts):
            self.lora_loaded.labels(m).set(0)
        for m, n in counts.items():
            self.lora_loaded.labels(m).set(n)
        self._lora_models |= set(counts)

    def _init_replicas(self) -> None:
        """Series of data-parallel replicas, labelled replica="0", "1", ..."""
        labels, r = ["model_name", "replica"], self.registry
        self.replica_routed = Counter(
            "heron:replica_requests_routed", "Requests routed to the replica.", labels, registry=r
        )
        self.replica_prefix_queries = Counter(
            "heron:replica_prefix_cache_queries",
            "Prompt tokens looked up in the replica's prefix cache.",
            labels,
            registry=r,
        )
        self.replica_prefix_hits = Counter(
            "heron:replica_prefix_cache_hits",
            "Prompt tokens served from the replica's prefix cache.",
            labels,
            registry=r,
        )
        self.replica_running = Gauge(
            "heron:replica_num_requests_running", "Requests running.", labels, registry=r
        )
        self.replica_waiting = Gauge(
            "heron:replica_num_requests_waiting", "Requests waiting.", labels, registry=r
        )
        self.replica_kv_usage = Gauge(
            "heron:replica_kv_cache_usage_perc", "KV cache blocks in use (0-1).", labels, registry=r
        )
        self.replica_up = Gauge(
            "heron:replica_up", "1 while the replica serves, 0 while down.", labels, registry=r
        )
        self.replica_restarts = Counter(
            "heron:replica_restarts",
            "Restarts of the replica by reason: crash (it died) or rolling (a rolling restart).",
            [*labels, "reason"],
            registry=r,
        )
        # (model, replica) -> (engine id, its last stats, routed count at the last scrape)
        self._replica_last: dict[tuple[str, int], tuple[int, EngineStats, int]] = {}
        self._replica_restarts: dict[tuple[str, int, str], int] = {}  # at the last scrape

    def update_replicas(self, models: dict[str, list[ReplicaStatus]]) -> None:
        """Mirror each data-parallel model's replicas; counters advance by the difference
        from the same engine's previous snapshot (a restarted replica starts from zero)."""
        for m, replicas in models.items():
            for rep in replicas:
                key, label = (m, rep.index), (m, str(rep.index))
                engine_id, last, routed = self._replica_last.get(key, (0, EngineStats(), 0))
                if engine_id != rep.engine_id:
                    last = EngineStats()
                stats = rep.stats
                for counter, new, old in (
                    (
                        self.replica_prefix_queries,
                        stats.prefix_cache_queries,
                        last.prefix_cache_queries,
                    ),
                    (self.replica_prefix_hits, stats.prefix_cache_hits, last.prefix_cache_hits),
                    (self.replica_routed, rep.routed, routed),
                ):
                    counter.labels(*label).inc(max(0, new - old))
                self.replica_running.labels(*label).set(stats.num_running)
                self.replica_waiting.labels(*label).set(stats.num_waiting)
                self.replica_kv_usage.labels(*label).set(stats.kv_cache_usage)
                self.replica_up.labels(*label).set(1 if rep.up else 0)
                for reason, count in rep.restarts.items():
                    before = self._replica_restarts.get((m, rep.index, reason), 0)
                    self.replica_restarts.labels(*label, reason).inc(max(0, count - before))
                    self._replica_restarts[(m, rep.index, reason)] = count
                self._replica_last[key] = (rep.engine_id, stats, rep.routed)

    def render(self) -> bytes:
        return generate_latest(self.registry)
