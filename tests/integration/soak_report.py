"""The soak's verdict and plots, as pure functions of its samples (tested without a stack).

**Pass criterion: nothing grows without bound.** The first ``warmup`` of the run (20%, at least
30 s) is start-up (models load, tables fill, the broker's retention reaches its steady state) and
is not judged. Over the rest, each series' trend is the Theil–Sen slope (the median of the slopes
between every pair of samples, robust to the spikes a shared machine makes), and the growth it
implies across the judged span must stay within:

================================  ==============================================
series                            allowed growth over the judged span
================================  ==============================================
RSS of each role (process tree)   10% of its median + 32 MB
explanation backlog (all queues)  1,000 requests
explanation gap p95 per priority  5,000 ms
verdict latency p99               250 ms
================================  ==============================================

and every transaction sent got its verdict (lost = 0). A leak or a queue that the explainers
cannot drain grows linearly, so over a 30-minute run it exceeds these bounds by far; noise and
sawtooth patterns (garbage collection, retention passes) have a flat trend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

RSS_SHARE, RSS_FLOOR_MB = 0.10, 32.0
BACKLOG_LIMIT = 1000.0
GAP_LIMIT_MS = 5000.0
LATENCY_LIMIT_MS = 250.0
WARMUP_SHARE, WARMUP_MIN_S = 0.2, 30.0


def theil_sen_slope(times: Sequence[float], values: Sequence[float]) -> float:
    """Median slope over all pairs of points (0 with fewer than two distinct times)."""
    t, v = np.asarray(times, dtype=float), np.asarray(values, dtype=float)
    i, j = np.triu_indices(len(t), k=1)
    dt = t[j] - t[i]
    keep = dt > 0
    return float(np.median((v[j] - v[i])[keep] / dt[keep])) if keep.any() else 0.0


def judged(samples: Sequence[Mapping[str, Any]]) -> list[Mapping[str, Any]]:
    """The samples after the warm-up."""
    if not samples:
        return []
    end = samples[-1]["t"]
    warmup = max(WARMUP_MIN_S, WARMUP_SHARE * end)
    return [s for s in samples if s["t"] >= warmup]


def growth_check(name: str, points: list[tuple[float, float]], limit: float) -> dict[str, Any]:
    """One series: its trend's growth across the judged span against ``limit``."""
    if len(points) < 3:
        return {"series": name, "growth": None, "limit": round(limit, 1), "ok": False, "why": "few samples"}
    times, values = zip(*points, strict=True)
    growth = theil_sen_slope(times, values) * (times[-1] - times[0])
    return {"series": name, "growth": round(growth, 1), "limit": round(limit, 1), "ok": growth <= limit}


def checks(samples: Sequence[Mapping[str, Any]], lost: int) -> list[dict[str, Any]]:
    """Every check of the criterion (module docstring) over ``samples``."""
    rest = judged(samples)
    out = [{"series": "lost verdicts", "growth": lost, "limit": 0, "ok": lost == 0}]
    for role in sorted({r for s in rest for r in s["rss_mb"]}):
        points = [(s["t"], s["rss_mb"][role]) for s in rest if role in s["rss_mb"]]
        median = float(np.median([v for _, v in points])) if points else 0.0
        out.append(growth_check(f"rss_mb {role}", points, RSS_SHARE * median + RSS_FLOOR_MB))
    backlog = [(s["t"], s["backlog"]) for s in rest if s["backlog"] is not None]
    out.append(growth_check("explain backlog", backlog, BACKLOG_LIMIT))
    for priority in ("high", "normal", "low"):
        gaps = [(s["t"], s["gap_p95_ms"].get(priority)) for s in rest]
        points = [(t, gap) for t, gap in gaps if gap is not None]
        if len(points) >= 3:  # a priority nothing was explained at has no gap to judge
            out.append(growth_check(f"gap_p95_ms {priority}", points, GAP_LIMIT_MS))
    latency = [(s["t"], s["latency_p99_ms"]) for s in rest if s["latency_p99_ms"] is not None]
    out.append(growth_check("verdict latency_p99_ms", latency, LATENCY_LIMIT_MS))
    return out


def plot(report: Mapping[str, Any], path: Path) -> None:
    """Four panels over time: RSS per role, queue depth per priority, gap p95, verdict latency."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    samples = report["samples"]
    minutes = [s["t"] / 60 for s in samples]
    figure, axes = plt.subplots(4, 1, figsize=(10, 13), sharex=True)
    for role in sorted({r for s in samples for r in s["rss_mb"]}):
        axes[0].plot(minutes, [s["rss_mb"].get(role) for s in samples], label=role)
    axes[0].set_ylabel("RSS (MB)")
    for priority in ("high", "normal", "low"):
        axes[1].plot(minutes, [s["queue_depth"].get(priority) for s in samples], label=priority)
        axes[2].plot(minutes, [s["gap_p95_ms"].get(priority) for s in samples], label=priority)
    axes[1].set_ylabel("explain queue depth")
    axes[2].set_ylabel("explanation gap p95 (ms)")
    axes[3].plot(minutes, [s["latency_p50_ms"] for s in samples], label="p50")
    axes[3].plot(minutes, [s["latency_p99_ms"] for s in samples], label="p99")
    axes[3].set_ylabel("verdict latency (ms)")
    axes[3].set_xlabel("minutes")
    warmup = max(WARMUP_MIN_S, WARMUP_SHARE * (samples[-1]["t"] if samples else 0)) / 60
    for axis in axes:
        axis.axvline(warmup, color="grey", linestyle=":", linewidth=1)
        axis.legend(loc="upper left", fontsize="small")
        axis.grid(alpha=0.3)
    verdict = "PASS" if report["passed"] else "FAIL"
    figure.suptitle(f"soak: {report['rate']:g} tx/s for {report['minutes']:g} min — {verdict}")
    figure.tight_layout()
    figure.savefig(path, dpi=90)
    plt.close(figure)
