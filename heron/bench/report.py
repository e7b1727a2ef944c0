"""Results of a run as results.json (every raw record, the summaries, the environment) and as
markdown (results.md, also printed)."""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import shlex
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from heron import __version__
from heron.bench.metrics import LevelSummary, ratio
from heron.bench.orchestrate import BenchResult

SCHEMA = "heron-bench/1"


def environment() -> dict[str, Any]:
    """The machine and software a run measured on."""
    usable: int | None
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        usable = os.cpu_count()
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    return {
        "heron_version": __version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor(),
        "cpu_count": os.cpu_count(),
        "cpus_usable": usable,
        "load_average": load,
        "time_utc": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }


def ratios(summaries: Sequence[LevelSummary], baseline: str) -> list[dict[str, Any]]:
    """Each non-baseline endpoint over the baseline at the same level: aggregate tok/s, mean
    decode tok/s and TTFT p50 (value / baseline value; > 1 is more tok/s, or a slower TTFT)."""
    base = {s.users: s for s in summaries if s.endpoint == baseline}
    out = []
    for s in summaries:
        b = base.get(s.users)
        if s.endpoint == baseline or b is None:
            continue
        out.append(
            {
                "endpoint": s.endpoint,
                "baseline": baseline,
                "users": s.users,
                "agg_tok_s": ratio(s.agg_tok_s, b.agg_tok_s),
                "decode_tok_s_mean": ratio(
                    s.decode.mean if s.decode else None, b.decode.mean if b.decode else None
                ),
                "ttft_p50": ratio(s.ttft.p50 if s.ttft else None, b.ttft.p50 if b.ttft else None),
            }
        )
    return out


def to_json(
    result: BenchResult,
    baseline: str,
    targets: Sequence[dict[str, Any]] = (),
    command: Sequence[str] | None = None,
    env: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The results.json document (see docs/bench.md for its keys)."""
    wl, st = result.workload, result.settings
    summaries = result.summaries()
    example = [{"role": "user", "content": wl.prompt}]
    return {
        "schema": SCHEMA,
        "environment": env if env is not None else environment(),
        "command": list(command if command is not None else sys.argv),
        "interrupted": result.interrupted,
        "workload": {
            "kind": wl.kind,
            "prompt": wl.prompt,
            "warmup": wl.warmup,
            "repeat": wl.repeat,
            "levels": [
                {
                    "users": lv.users,
                    "requests_per_user": lv.requests_per_user,
                    "conversations": lv.conversations,
                    "turns": lv.turns,
                }
                for lv in wl.levels
            ],
        },
        "settings": {
            "model": st.model,
            "max_tokens": st.max_tokens,
            "temperature": st.temperature,
            "suppress_eos": st.suppress_eos,
            "eos_token_ids": list(st.eos_token_ids),
            "timeout_s": st.timeout,
            "api_key": st.api_key is not None,  # never the key itself
            "request_body": {api: st.body(api, example) for api in ("openai", "ollama")},
        },
        "endpoints": list(targets),
        "baseline": baseline,
        "summaries": [s.to_dict() for s in summaries],
        "ratios": ratios(summaries, baseline),
        "runs": [
            {
                "endpoint": r.endpoint,
                "level": r.level,
                "users": r.users,
                "repeat": r.repeat,
                "wall_s": r.wall_s,
                "records": [x.to_dict() for x in r.records],
            }
            for r in result.runs
        ],
        "warmups": [x.to_dict() for x in result.warmups],
    }


def _ms(seconds: float | None) -> str:
    if seconds is None:
        return "–"
    ms = seconds * 1000
    return f"{ms:.1f}" if ms < 100 else f"{ms:,.0f}"


def _num(value: float | None, fmt: str = ".1f") -> str:
    return "–" if value is None else format(value, fmt)


def _x(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}x"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def summary_table(summaries: Sequence[LevelSummary]) -> list[str]:
    """The main table: one row per endpoint and level."""
    header: tuple[str, ...] = (
        "endpoint",
        "users",
        "ok",
        "tok/req",
        "agg tok/s",
        "decode tok/s",
        "TTFT p50 ms",
        "TTFT p90 ms",
        "TTFT p99 ms",
        "ITL p50 ms",
        "ITL p99 ms",
        "E2E p50 s",
        "E2E p99 s",
    )
    rows: list[tuple[str, ...]] = []
    for s in summaries:
        rows.append(
            (
                s.endpoint,
                str(s.users),
                f"{s.num_ok}/{s.num_requests}",
                _num(s.tokens_per_request, ".0f"),
                _num(s.agg_tok_s),
                _num(s.decode.mean if s.decode else None),
                _ms(s.ttft.p50 if s.ttft else None),
                _ms(s.ttft.p90 if s.ttft else None),
                _ms(s.ttft.p99 if s.ttft else None),
                _ms(s.itl.p50 if s.itl else None),
                _ms(s.itl.p99 if s.itl else None),
                _num(s.e2e.p50 if s.e2e else None, ".2f"),
                _num(s.e2e.p99 if s.e2e else None, ".2f"),
            )
        )
    if any(s.spec_acceptance is not None for s in summaries):
        # speculative decoding's acceptance, only when some endpoint reported drafts
        header = (*header, "spec accept %")
        accept = [
            _num(None if s.spec_acceptance is None else 100 * s.spec_acceptance) for s in summaries
        ]
        rows = [(*row, a) for row, a in zip(rows, accept, strict=True)]
    if any(s.replica_hit_rates is not None for s in summaries):
        # a data-parallel Heron's prefix-cache hit rate per replica ("0:85 1:80")
        header = (*header, "prefix hit % by replica")
        hits = [
            " ".join(f"{r}:{100 * v:.0f}" for r, v in (s.replica_hit_rates or {}).items()) or "-"
            for s in summaries
        ]
        rows = [(*row, h) for row, h in zip(rows, hits, strict=True)]
    return _table(header, rows)


def to_markdown(doc: dict[str, Any], summaries: Sequence[LevelSummary]) -> str:
    """results.md from the JSON document and its summaries."""
    wl, st, env = doc["workload"], doc["settings"], doc["environment"]
    eos = "not suppressed"
    if st["suppress_eos"]:
        eos = "suppressed (ignore_eos" + (
            f"; logit_bias -100 on ids {', '.join(map(str, st['eos_token_ids']))})"
            if st["eos_token_ids"]
            else "; no logit_bias: no EOS token id known)"
        )
    if st["suppress_eos"] and any(e.get("api") == "ollama" for e in doc["endpoints"]):
        eos += "; the Ollama API has no way to suppress it"
    prompt = wl["prompt"] if len(wl["prompt"]) <= 120 else wl["prompt"][:117] + "..."
    lines = [
        f"# heron bench: {wl['kind']}",
        "",
        f'Model `{st["model"]}`; prompt "{prompt}"; max_tokens {st["max_tokens"]}, '
        f"temperature {st['temperature']:g}, end of sequence {eos}. Warm-up {wl['warmup']} "
        f"request(s) per server start; {wl['repeat']} repeat(s), alternating endpoint order.",
        "",
        f"Machine: {env.get('platform')}, {env.get('cpus_usable')} usable CPUs; "
        f"heron {env.get('heron_version')}; {env.get('time_utc')}.",
        "",
        f"Command: `{shlex.join(doc['command'])}`",
        "",
    ]
    if doc["interrupted"]:
        lines += ["**Interrupted: partial results.**", ""]
    lines += ["## Results", "", *summary_table(summaries), ""]
    if doc["ratios"]:
        lines += [
            f"## Ratio to {doc['baseline']}",
            "",
            "value / baseline value at the same users (tok/s: higher is faster; "
            "TTFT: lower is faster).",
            "",
        ]
        rows = [
            (
                r["endpoint"],
                str(r["users"]),
                _x(r["agg_tok_s"]),
                _x(r["decode_tok_s_mean"]),
                _x(r["ttft_p50"]),
            )
            for r in doc["ratios"]
        ]
        lines += [*_table(("endpoint", "users", "agg tok/s", "decode tok/s", "TTFT p50"), rows), ""]
    turns = sorted({t for s in summaries for t in s.ttft_by_turn})
    if turns:
        header = [
            "endpoint",
            "users",
            *(f"turn {t} TTFT p50 ms" for t in turns),
            f"turn {turns[-1]} / turn 1",
        ]
        turn_rows: list[list[str]] = []
        for s in summaries:
            p50: list[float | None] = [
                s.ttft_by_turn[t].p50 if t in s.ttft_by_turn else None for t in turns
            ]
            turn_rows.append([s.endpoint, str(s.users), *map(_ms, p50), _x(ratio(p50[-1], p50[0]))])
        lines += ["## TTFT by turn", "", *_table(header, turn_rows), ""]
    errors = [
        (s.endpoint, str(s.users), str(n), text.replace("|", "\\|").replace("\n", " "))
        for s in summaries
        for text, n in s.errors.items()
    ]
    if errors:
        lines += ["## Errors", "", *_table(("endpoint", "users", "count", "error"), errors), ""]
    return "\n".join(lines)


def write_results(out_dir: Path, doc: dict[str, Any], markdown: str) -> list[Path]:
    """results.json and results.md into ``out_dir`` (created); returns the paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, md_path = out_dir / "results.json", out_dir / "results.md"
    json_path.write_text(json.dumps(doc, indent=1) + "\n")
    md_path.write_text(markdown + "\n")
    return [json_path, md_path]
