"""Isolation: does explainer load cost the verdict path? Verdict p99 at a paced rate with the
explainers saturated (a backlog of low-priority work, interventional SHAP) divided by verdict p99
with the explainers stopped (SIGSTOP: no CPU, no I/O), measured in one run in alternating
windows off/on/off/on. Target: ratio ≤ 1.2.

    python -m bench.isolation [--quick] [--models DIR]
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
import psutil

from bench.common import cdf_points, cpu_seconds, load_average, percentiles, plot_cdfs, start_scorer, target
from bench.explainer import _explained_by, _verdicts
from bench.scorer import _paced
from tests.integration.harness import Stack, wait_until

RATIO_TARGET = 1.2
WINDOW_KEYS = ("explainers", "explainers_cpu_cores", "broker_cpu_cores", "scorer_cpu_cores", "load_average")


def _low_backlog(models: Path, count: int) -> list[dict[str, Any]]:
    """Scored verdicts that the router files as low priority (approved, small amounts)."""
    verdicts = _verdicts(models, count * 2, seed=41)
    low = [v for v in verdicts if v["decision"] == "approve" and v["amount"] < 100]
    return low[:count]


def _set_running(pids: list[int], running: bool) -> None:
    """SIGCONT or SIGSTOP the explainers and their children."""
    for pid in pids:
        process = psutil.Process(pid)
        for member in [process, *process.children(recursive=True)]:
            member.resume() if running else member.suspend()


def _send(stack: Stack, verdicts: list[dict[str, Any]]) -> None:
    stack.produce((v["transaction_id"].encode(), orjson.dumps(v)) for v in verdicts)  # type: ignore[misc]


def measure(stack: Stack, quick: bool, models: Path) -> dict[str, Any]:
    rate, seconds = (200.0, 3.0) if quick else (1000.0, 15.0)
    start_scorer(stack)
    explainer_env = {
        "FRAUDLENS_EXPLAIN_METHOD": "interventional",
        "FRAUDLENS_SESSION_TIMEOUT_S": "300",  # a stopped window must not evict them
        "FRAUDLENS_EXPLAIN_STATS_EVERY_S": "1",
    }
    explainers = [
        stack.start_worker("explainer", FRAUDLENS_INSTANCE_ID=f"iso-{i}", **explainer_env) for i in range(2)
    ]
    backlog = _low_backlog(models, 500 if quick else 20_000)
    _send(stack, backlog)
    wait_until(lambda: len(_explained_by(stack)) >= 1, 120, "an explainer to start on the backlog", 0.5)
    pids = [p.pid for p in explainers]
    roles = {"explainers": pids, "broker": [stack.processes[0].pid], "scorer": [stack.processes[1].pid]}
    windows = []
    for index, state in enumerate(("off", "on", "off", "on")):
        _set_running(pids, state == "on")
        cpu_before = {role: cpu_seconds(members) for role, members in roles.items()}
        began = time.monotonic()
        run = _paced(stack, rate, seconds, "transactions", 700 + index, "verdicts")
        elapsed = time.monotonic() - began
        busy = {
            f"{r}_cpu_cores": round((cpu_seconds(m) - cpu_before[r]) / elapsed, 2) for r, m in roles.items()
        }
        windows.append({
            "explainers": state, "rate": rate, "seconds": seconds, "latency_ms": run["latency_ms"],
            **busy, "load_average": load_average(), "samples": run["samples"],
        })  # fmt: skip
    _set_running(pids, True)
    return {"windows": windows, "backlog": len(backlog), "explained_by_process": _explained_by(stack)}


def run(quick: bool, models: Path, out: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fraudlens-bench-iso-") as tmp:
        stack = Stack(root=Path(tmp), models_dir=models)
        try:
            stack.start_broker()
            raw = measure(stack, quick, models)
        finally:
            stack.stop_all()
    pooled = {
        state: [s for w in raw["windows"] if w["explainers"] == state for s in w["samples"]]
        for state in ("off", "on")
    }
    stats = {state: percentiles(samples) for state, samples in pooled.items()}
    ratio = round(stats["on"]["p99"] / stats["off"]["p99"], 2) if stats["off"].get("p99") else None
    name = "isolation-quick.png" if quick else "isolation.png"
    plot_cdfs(
        {f"explainers {state} ({len(s)} verdicts)": s for state, s in pooled.items()},
        out / name, f"Verdict latency at {raw['windows'][0]['rate']:.0f} tx/s, explainers stopped/saturated",
        "produce → verdict consumed, ms",
    )  # fmt: skip
    for window in raw["windows"]:
        window["cdf_ms"] = cdf_points(window.pop("samples"))
    summary = {
        "rate": raw["windows"][0]["rate"], "window_s": raw["windows"][0]["seconds"],
        "p99_ms_off": stats["off"].get("p99"), "p99_ms_on": stats["on"].get("p99"), "p99_ratio": ratio,
        "p50_ms_off": stats["off"].get("p50"), "p50_ms_on": stats["on"].get("p50"),
        "windows": [
            {k: w[k] for k in WINDOW_KEYS} | {
                "p50_ms": w["latency_ms"]["p50"], "p99_ms": w["latency_ms"]["p99"]}
            for w in raw["windows"]
        ],
    }  # fmt: skip
    targets = {
        "isolation_p99_ratio": target("verdict p99 explainers saturated / stopped ≤ 1.2", ratio, RATIO_TARGET)
    }
    return {"summary": summary, "targets": targets, "raw": raw, "plots": [name]}


if __name__ == "__main__":
    from bench.__main__ import main_one

    main_one("isolation")
