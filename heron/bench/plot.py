"""PNG plots of a run: aggregate tok/s against users, and TTFT p50 against users (log y), one
line per endpoint. matplotlib is imported here only, when plots are written; it comes with the
``bench`` extra, not with Heron itself."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from heron.bench.metrics import LevelSummary
from heron.bench.workload import BenchError

NEEDS_MATPLOTLIB = "heron bench --plots needs matplotlib: pip install 'heron[bench]'"


def _series(
    summaries: Sequence[LevelSummary], value: str
) -> dict[str, tuple[list[int], list[float]]]:
    out: dict[str, tuple[list[int], list[float]]] = {}
    for s in summaries:
        if value == "agg_tok_s":
            y = s.agg_tok_s
        else:
            y = s.ttft.p50 * 1000 if s.ttft else None
        if y is None or y <= 0:
            continue
        xs, ys = out.setdefault(s.endpoint, ([], []))
        xs.append(s.users)
        ys.append(y)
    return out


def write_plots(out_dir: Path, summaries: Sequence[LevelSummary], title: str = "") -> list[Path]:
    """throughput.png and ttft.png into ``out_dir``; returns the paths written (none when no
    level has data). Raises BenchError if matplotlib is not installed."""
    try:
        import matplotlib
    except ImportError as exc:
        raise BenchError(f"{NEEDS_MATPLOTLIB} (or pass --no-plots)") from exc

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    out_dir.mkdir(parents=True, exist_ok=True)
    users = sorted({s.users for s in summaries})
    written = []
    for name, value, ylabel, log in (
        ("throughput.png", "agg_tok_s", "aggregate tokens/s", False),
        ("ttft.png", "ttft_p50", "TTFT p50 (ms, log scale)", True),
    ):
        series = _series(summaries, value)
        if not series:
            continue
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=100)
        try:
            for endpoint, (xs, ys) in series.items():
                ax.plot(xs, ys, marker="o", label=endpoint)
            if len(users) > 1 and users[0] > 0 and users[-1] / users[0] >= 8:
                ax.set_xscale("log", base=2)
            ax.set_xticks(users, [str(u) for u in users])
            ax.xaxis.set_minor_formatter(NullFormatter())
            if log:
                ax.set_yscale("log")
            ax.set_xlabel("concurrent users")
            ax.set_ylabel(ylabel)
            if title:
                ax.set_title(title)
            ax.grid(True, which="both", alpha=0.3)
            ax.legend()
            fig.tight_layout()
            path = out_dir / name
            fig.savefig(path)
            written.append(path)
        finally:
            plt.close(fig)
    return written
