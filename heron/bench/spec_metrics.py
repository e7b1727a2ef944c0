"""Speculative decoding's acceptance rate, read from an endpoint's Prometheus ``/metrics``
(Heron's ``heron:spec_decode_*`` counters) before and after a run. Endpoints without them
(llama-server, Ollama, Heron without speculation) give None."""

from __future__ import annotations

import re

import httpx

_DRAFTS = "heron:spec_decode_num_draft_tokens_total"
_ACCEPTED = "heron:spec_decode_num_accepted_tokens_total"


def _sum(text: str, name: str) -> float | None:
    values = re.findall(rf"^{re.escape(name)}(?:\{{[^}}]*\}})? ([0-9.e+-]+)$", text, re.M)
    return sum(float(v) for v in values) if values else None


def parse_spec_counters(text: str) -> tuple[float, float] | None:
    """(draft tokens, accepted tokens) summed over models, or None when not exposed. Pure."""
    drafts, accepted = _sum(text, _DRAFTS), _sum(text, _ACCEPTED)
    if drafts is None or accepted is None:
        return None
    return drafts, accepted


def scrape_spec_counters(url: str) -> tuple[float, float] | None:
    """The endpoint's counters now (``url`` is its base URL); None when it has none or does
    not answer."""
    try:
        r = httpx.get(url.rstrip("/") + "/metrics", timeout=5.0)
    except httpx.HTTPError:
        return None
    return parse_spec_counters(r.text) if r.status_code == 200 else None


def delta(
    before: tuple[float, float] | None, after: tuple[float, float] | None
) -> tuple[float, float] | None:
    """The counters' growth over a run; None unless both snapshots exist."""
    if before is None or after is None:
        return None
    return after[0] - before[0], after[1] - before[1]
