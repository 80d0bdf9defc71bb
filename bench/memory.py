"""Memory: RSS of each role (broker, scorer, explainer, relay; each with its children) sampled
every second while the whole stack takes paced transactions (1,000 tx/s for 5 minutes), peak
per role and a growth check: the slope of a least-squares line through the last 3 minutes.
Target (stated here): every role's slope ≤ 10 MB/min, i.e. memory settles instead of growing
without bound.

    python -m bench.memory [--quick] [--models DIR]
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import RssSampler, pyplot, start_scorer, target
from bench.explainer import PacedProducer
from tests.integration.harness import Stack, start_relay

SLOPE_BOUND_MB_PER_MIN = 10.0


def measure(stack: Stack, rate: float, seconds: float) -> dict[str, Any]:
    broker = stack.processes[0]
    start_scorer(stack)
    explainer = stack.start_worker("explainer")
    relay = start_relay(stack)
    scorer = next(p for p in stack.processes if p.name == "scorer")
    sampler = RssSampler(
        {"broker": broker.pid, "scorer": scorer.pid, "explainer": explainer.pid, "relay": relay.process.pid}
    )
    load = PacedProducer(stack, rate, seed=23)
    sampler.start()
    began = time.monotonic()
    load.start()
    time.sleep(seconds)  # the measurement window itself, not a synchronisation
    load.stop.set()
    load.join(30)
    offered = load.sent / (time.monotonic() - began)
    sampler.stop.set()
    sampler.join(10)
    alive = {p.name: p.alive() for p in (broker, scorer, explainer, relay.process)}
    samples = [[round(t, 1), {k: round(v, 1) for k, v in rss.items()}] for t, rss in sampler.samples]
    return {"rate": rate, "seconds": seconds, "offered_tx_per_s": round(offered, 1), "alive": alive,
            "samples": samples}  # fmt: skip


def growth(samples: list[list[Any]], role: str, last_s: float) -> dict[str, float]:
    end = samples[-1][0]
    points = [(t, rss[role]) for t, rss in samples if t >= end - last_s]
    times = np.asarray([t for t, _ in points]) / 60
    values = np.asarray([v for _, v in points])
    slope = float(np.polyfit(times, values, 1)[0]) if len(points) >= 3 else float("nan")
    every = [rss[role] for _, rss in samples]
    return {"peak_mb": round(max(every), 1), "end_mb": round(every[-1], 1),
            "slope_mb_per_min": round(slope, 2), "window_s": last_s}  # fmt: skip


def _plot(samples: list[list[Any]], path: Path, rate: float) -> None:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for role in samples[0][1]:
        ax.plot([t for t, _ in samples], [rss[role] for _, rss in samples], label=role)
    ax.set_xlabel("seconds")
    ax.set_ylabel("RSS incl. children, MB")
    ax.set_title(f"Memory per role at {rate:.0f} tx/s")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)


def run(quick: bool, models: Path, out: Path) -> dict[str, Any]:
    rate, seconds = (200.0, 15.0) if quick else (1000.0, 300.0)
    seconds = float(os.environ.get("FRAUDLENS_BENCH_MEMORY_SECONDS", seconds))  # a longer run, by hand
    with tempfile.TemporaryDirectory(prefix="fraudlens-bench-mem-") as tmp:
        stack = Stack(root=Path(tmp), models_dir=models)
        try:
            stack.start_broker()
            raw = measure(stack, rate, seconds)
        finally:
            stack.stop_all()
    window = seconds * 0.6  # the last 3 of 5 minutes (the last 60% of a longer run)
    roles = {role: growth(raw["samples"], role, window) for role in raw["samples"][0][1]}
    name = "memory-quick.png" if quick else "memory.png"
    _plot(raw["samples"], out / name, rate)
    targets = {
        f"{role}_rss_slope": target(
            f"{role} RSS slope over the last {window:.0f} s ≤ {SLOPE_BOUND_MB_PER_MIN:.0f} MB/min",
            figures["slope_mb_per_min"], SLOPE_BOUND_MB_PER_MIN,
        )
        for role, figures in roles.items()
    }  # fmt: skip
    summary = {"rate": rate, "seconds": seconds, "offered_tx_per_s": raw["offered_tx_per_s"],
               "roles": roles, "all_alive_at_end": all(raw["alive"].values())}  # fmt: skip
    return {"summary": summary, "targets": targets, "raw": raw, "plots": [name]}


if __name__ == "__main__":
    from bench.__main__ import main_one

    main_one("memory")
