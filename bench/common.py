"""What every benchmark shares: percentiles, target verdicts, machine facts, RSS sampling, plots.

A benchmark module exposes ``run(quick, models, out) -> dict`` with ``summary`` (small, for the
README), ``targets`` (name → {target, value, pass}), ``raw`` (what the summary was made from) and
``plots`` (PNG file names in ``out``). ``python -m bench`` runs them and writes one results file.
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import psutil

from app.records.kinds import CONTRIBUTIONS, kind_of
from tests.integration.harness import Stack, wait_until

REPO = Path(__file__).resolve().parents[1]


def percentiles(values: Sequence[float], qs: Iterable[float] = (50, 90, 99, 99.9)) -> dict[str, float]:
    """p50/p90/p99/p99.9 and max (ms in, ms out), and how many samples."""
    if len(values) == 0:
        return {"n": 0}
    array = np.asarray(values, dtype=float)
    out: dict[str, float] = {f"p{q:g}": round(float(np.percentile(array, q)), 2) for q in qs}
    return out | {"max": round(float(array.max()), 2), "n": int(array.size)}


def cdf_points(values: Sequence[float], points: int = 200) -> list[float]:
    """The sample shrunk to ``points`` evenly spaced quantiles (what a CDF plot needs)."""
    if len(values) == 0:
        return []
    quantiles = np.linspace(0, 100, points)
    return [round(float(v), 3) for v in np.percentile(np.asarray(values, dtype=float), quantiles)]


def target(
    description: str, value: float | None, limit: float, higher_is_better: bool = False
) -> dict[str, Any]:
    """One target's verdict: ``value`` against ``limit`` (≤ unless ``higher_is_better``)."""
    if value is None or not np.isfinite(value):
        passed = False
    else:
        passed = value >= limit if higher_is_better else value <= limit
    return {"target": description, "value": value, "limit": limit, "pass": bool(passed)}


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def machine_facts() -> dict[str, Any]:
    memory = psutil.virtual_memory()
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpus": os.cpu_count(), "cpu_model": model, "memory_gb": round(memory.total / 2**30, 1),
        "python": sys.version.split()[0], "platform": platform.platform(),
    }  # fmt: skip


def git_commit() -> str:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True, text=True
        )  # the benchmarks' own outputs are not a change to the code measured
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


# Issue 18's targets (gap per priority, CPU per explanation, records, sync vs async) were set
# for one kind of explanation; the benchmarks that judge them run the explainer with
# contributions alone, as then. ``make bench-kinds`` measures what the counterfactuals routed
# by default (deny and review) add, on vs off alternating.
CONTRIBUTIONS_ONLY = {"FRAUDLENS_EXPLAIN_COUNTERFACTUAL_DECISIONS": "[]"}


def contributions(update: dict[str, Any]) -> bool:
    """Whether an ``explanation.updates`` record is of the contributions kind (no kind: one)."""
    return kind_of(update) == CONTRIBUTIONS


def start_scorer(stack: Stack, **env: str) -> None:
    """A scorer, up once it has answered a few transactions."""
    from app.model.generator import generate_transactions

    stack.start_worker("scorer", **env)
    stack.produce_transactions(generate_transactions(20, seed=1))
    stack.reader("verdicts").read_until(lambda m: len(m) >= 20, 120, "the scorer to be up")


def rss_mb(pid: int) -> float:
    """Resident memory of a process and all its children, MB (0 once it is gone)."""
    try:
        process = psutil.Process(pid)
        members = [process, *process.children(recursive=True)]
    except psutil.NoSuchProcess:
        return 0.0
    total = 0
    for member in members:
        try:
            total += member.memory_info().rss
        except psutil.NoSuchProcess:
            continue
    return total / 2**20


class RssSampler(threading.Thread):
    """Samples the RSS (incl. children) of each named process every ``every_s`` seconds."""

    def __init__(self, pids: Mapping[str, int], every_s: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.pids, self.every_s = dict(pids), every_s
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.stop = threading.Event()
        self.began = time.monotonic()

    def run(self) -> None:
        while not self.stop.is_set():
            elapsed = time.monotonic() - self.began
            self.samples.append((elapsed, {role: rss_mb(pid) for role, pid in self.pids.items()}))
            self.stop.wait(self.every_s)


def cpu_seconds(pids: Iterable[int]) -> float:
    """User + system CPU seconds used so far by these processes and their children."""
    total = 0.0
    for pid in pids:
        try:
            process = psutil.Process(pid)
            for member in [process, *process.children(recursive=True)]:
                times = member.cpu_times()
                total += times.user + times.system
        except psutil.NoSuchProcess:
            continue
    return total


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_cdfs(curves: Mapping[str, Sequence[float]], path: Path, title: str, xlabel: str) -> None:
    """Latency CDFs on a log x axis, one line per label (values in ms)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, values in curves.items():
        if len(values) == 0:
            continue
        ordered = np.sort(np.asarray(values, dtype=float))
        ax.plot(np.maximum(ordered, 0.01), np.linspace(0, 1, ordered.size), label=label)
    ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("fraction")
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


__all__ = ["Stack", "wait_until"]
