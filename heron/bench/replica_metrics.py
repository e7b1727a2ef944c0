"""Per-replica prefix-cache hit rates of a data-parallel Heron server, read from its
Prometheus ``/metrics`` (``heron:replica_prefix_cache_{hits,queries}_total{replica="i"}``)
before and after a run. Endpoints without replicas (one engine, llama-server) give None."""

from __future__ import annotations

import re

import httpx

_HITS = "heron:replica_prefix_cache_hits_total"
_QUERIES = "heron:replica_prefix_cache_queries_total"
_ROUTED = "heron:replica_requests_routed_total"

# replica -> (prefix-cache hits, queries, requests routed), summed over models
ReplicaCounters = dict[str, tuple[float, float, float]]


def _by_replica(text: str, name: str) -> dict[str, float]:
    out: dict[str, float] = {}
    pattern = rf'^{re.escape(name)}\{{[^}}]*replica="([^"]+)"[^}}]*\}} ([0-9.e+-]+)$'
    for replica, value in re.findall(pattern, text, re.M):
        out[replica] = out.get(replica, 0.0) + float(value)
    return out


def parse_replica_counters(text: str) -> ReplicaCounters | None:
    """Each replica's counters, or None when the endpoint exposes none. Pure."""
    hits, queries, routed = (_by_replica(text, n) for n in (_HITS, _QUERIES, _ROUTED))
    if not queries:
        return None
    return {
        r: (hits.get(r, 0.0), queries[r], routed.get(r, 0.0))
        for r in sorted(queries, key=lambda r: (len(r), r))
    }


def scrape_replica_counters(url: str) -> ReplicaCounters | None:
    """The endpoint's counters now (``url`` is its base URL); None when it has none or does
    not answer."""
    base = url.rstrip("/").removesuffix("/v1").removesuffix("/api")  # an API root: its server's
    try:
        r = httpx.get(base + "/metrics", timeout=5.0)
    except httpx.HTTPError:
        return None
    return parse_replica_counters(r.text) if r.status_code == 200 else None


def replica_delta(
    before: ReplicaCounters | None, after: ReplicaCounters | None
) -> ReplicaCounters | None:
    """The counters' growth over a run, per replica; None unless both snapshots exist."""
    if before is None or after is None:
        return None
    zero = (0.0, 0.0, 0.0)
    return {
        r: (h - before.get(r, zero)[0], q - before.get(r, zero)[1], n - before.get(r, zero)[2])
        for r, (h, q, n) in after.items()
    }


def hit_rates(deltas: list[ReplicaCounters | None]) -> dict[str, float] | None:
    """Hits / queries per replica over runs (a replica with no queries: 0), or None when no
    run saw replicas."""
    total: dict[str, list[float]] = {}
    for d in deltas:
        for r, (h, q, _) in (d or {}).items():
            acc = total.setdefault(r, [0.0, 0.0])
            acc[0] += h
            acc[1] += q
    if not total:
        return None
    return {r: (h / q if q > 0 else 0.0) for r, (h, q) in total.items()}
