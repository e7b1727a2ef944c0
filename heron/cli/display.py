"""How the CLI shows things: sizes, times, durations, tables, and the progress of a pull or an
upload. Formats follow what Ollama users already read (``98 MB``, ``2 minutes ago``)."""

from __future__ import annotations

import math
import re
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

_UNITS = (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("KB", 1e3))
_FOREVER_S = 50 * 365 * 86400  # a keep_alive this far away is "Forever"
_FRACTION = re.compile(r"(\.\d{6})\d+")


def human_bytes(size: int) -> str:
    """Decimal units: ``512 B``, ``1.5 KB``, ``98 MB``, ``1.3 GB``."""
    for unit, scale in _UNITS:
        if size >= scale:
            value = size / scale
            if value >= 10 or value == int(value):
                return f"{int(value)} {unit}"
            return f"{value:.1f} {unit}"
    return f"{size} B"


def parse_time(text: str) -> float | None:
    """Seconds since the epoch of an RFC 3339 time (nanoseconds allowed); None if unparsable."""
    if not text:
        return None
    try:
        return datetime.fromisoformat(_FRACTION.sub(r"\1", text.replace("Z", "+00:00"))).timestamp()
    except ValueError:
        return None


def _span(seconds: float) -> str:
    minute, hour, day, week = 60, 3600, 86400, 7 * 86400
    month, year = 30 * day, 365 * day
    if seconds < 1:
        return "Less than a second"
    for limit, unit, size, about in (
        (minute, "second", 1, None),
        (hour, "minute", minute, "About a minute"),
        (day, "hour", hour, "About an hour"),
        (week, "day", day, None),
        (month, "week", week, None),
        (year, "month", month, None),
        (math.inf, "year", year, None),
    ):
        if seconds < limit:
            count = int(seconds // size)
            if count == 1:
                return about or f"1 {unit}"
            return f"{count} {unit}s"
    raise AssertionError("unreachable")


def human_time(when: float | None, now: float | None = None) -> str:
    """``2 minutes ago``, ``4 minutes from now``, ``Forever`` (far future) or ``Never``."""
    if when is None:
        return "Never"
    now = time.time() if now is None else now
    delta = when - now
    if delta > _FOREVER_S:
        return "Forever"
    if delta >= 0:
        return f"{_span(delta)} from now"
    return f"{_span(-delta)} ago"


def go_duration(ns: int) -> str:
    """A duration in nanoseconds as Go prints one: ``812ns``, ``5.066492ms``, ``3.8006s``,
    ``1m2.5s``."""
    if ns < 0:
        return "-" + go_duration(-ns)
    if ns < 1_000:
        return f"{ns}ns"
    if ns < 1_000_000:
        return _trim(ns / 1_000, 3) + "µs"
    if ns < 1_000_000_000:
        return _trim(ns / 1_000_000, 6) + "ms"
    minutes, rest_ns = divmod(ns, 60_000_000_000)
    hours, minutes = divmod(minutes, 60)
    seconds = _trim(rest_ns / 1e9, 9) + "s"
    if hours:
        return f"{hours}h{minutes}m{seconds}"
    if minutes:
        return f"{minutes}m{seconds}"
    return seconds


def _trim(value: float, digits: int) -> str:
    text = f"{value:.{digits}f}"
    return text.rstrip("0").rstrip(".") if "." in text else text


def table(headers: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    """Left-aligned columns three spaces apart, headers first, no borders."""
    all_rows = [list(headers), *[list(r) for r in rows]]
    widths = [max(len(r[i]) for r in all_rows) for i in range(len(headers))]
    lines = ["   ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in all_rows]
    return "\n".join(line.rstrip() for line in lines)


def stats_lines(final: dict[str, Any], ttft_s: float | None) -> list[str]:
    """The statistics ``run --verbose`` prints after a reply, from its final NDJSON chunk."""
    lines: list[str] = []

    def add(label: str, value: str) -> None:
        lines.append(f"{label + ':':<22}{value}")

    def rate(count_key: str, duration_key: str) -> str:
        count, duration = final.get(count_key) or 0, final.get(duration_key) or 0
        return f"{count / (duration / 1e9):.2f} tokens/s" if duration else "n/a"

    for label, key in (("total duration", "total_duration"), ("load duration", "load_duration")):
        if final.get(key) is not None:
            add(label, go_duration(int(final[key])))
    add("prompt eval count", f"{final.get('prompt_eval_count') or 0} token(s)")
    add("prompt eval duration", go_duration(int(final.get("prompt_eval_duration") or 0)))
    add("prompt eval rate", rate("prompt_eval_count", "prompt_eval_duration"))
    add("eval count", f"{final.get('eval_count') or 0} token(s)")
    add("eval duration", go_duration(int(final.get("eval_duration") or 0)))
    add("eval rate", rate("eval_count", "eval_duration"))
    if ttft_s is not None:
        add("time to first token", go_duration(int(ttft_s * 1e9)))
    return lines


class TransferProgress:
    """Rich progress bars (bytes, rate, ETA) for the status lines of a pull, a create or an
    upload, on stderr. A line with ``digest`` and ``total`` drives that digest's bar; any other
    ``status`` is printed once, below the bars so far, which then stay as they ended, so the
    output reads in order on a terminal and in a log alike."""

    def __init__(self, stream: TextIO | None = None) -> None:
        self.console = Console(file=stream or sys.stderr, highlight=False)
        self.progress: Progress | None = None
        self.tasks: dict[str, TaskID] = {}
        self.last_status: str | None = None

    def __enter__(self) -> TransferProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        self._close()

    def _close(self) -> None:
        if self.progress is not None:
            self.progress.stop()
            self.progress = None
            self.tasks.clear()

    def update(self, item: dict[str, Any]) -> None:
        status = str(item.get("status", ""))
        digest = item.get("digest")
        if digest and item.get("total"):
            self.bar(str(digest), status, int(item["total"]), int(item.get("completed") or 0))
            return
        if status and status != self.last_status:
            self._close()
            self.console.print(status, markup=False, soft_wrap=True)
        self.last_status = status

    def bar(self, key: str, description: str, total: int, completed: int) -> None:
        if self.progress is None:
            self.progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                DownloadColumn(),
                TransferSpeedColumn(),
                TimeRemainingColumn(),
                console=self.console,
            )
            self.progress.start()
        task = self.tasks.get(key)
        if task is None:
            task = self.progress.add_task(description or key, total=total)
            self.tasks[key] = task
        self.progress.update(task, total=total, completed=completed)
        self.last_status = None
