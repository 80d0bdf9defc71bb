"""Verdict latency second by second beside the embedded broker's work: where do stalls come from?

A diagnostic, not a target (not in ``make bench``): the broker and one scorer, no explainers,
generator transactions paced at ``--rate`` for ``--seconds``; each verdict's latency (produce →
consumed: ``bench.scorer._paced``) grouped by the second it was sent, beside the CPU of the
broker's shim, its noida-db child and the scorer (``/proc`` via psutil, sampled every 100 ms) and
every write of noida-db's store files (``kafka.json`` and its ``kafka.tmp``). Found with it
(2026-12-05): a 300-540 ms stall every 30 s from noida-db compacting the ``compact,delete``
changelogs (``devbroker/fraudlens_devbroker/retention.py``).

    python -m bench.stall_trace [--rate 1000] [--seconds 100] [--models DIR] [--out FILE]

Prints one line per second (``<==`` marks a second whose slowest verdict took over
``--mark-ms``) and a summary of the seconds after ``--settle`` (the store grows to its retention
first); writes both, with the store writes, to ``--out`` (JSON).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import psutil

from bench.common import start_scorer
from bench.scorer import _paced
from tests.integration.harness import Stack

ROOT = Path(__file__).resolve().parent.parent


class _Sampler(threading.Thread):
    """CPU seconds of each process and the store files' (size, mtime), every ``every_s``."""

    def __init__(self, processes: dict[str, psutil.Process], store: Path, every_s: float = 0.1) -> None:
        super().__init__(daemon=True)
        self.processes, self.store, self.every_s = processes, store, every_s
        self.rows: list[dict[str, Any]] = []
        self.writes: list[tuple[float, str, int]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        seen: dict[str, tuple[int, float]] = {}
        while not self.stop.wait(self.every_s):
            now = time.time()
            row: dict[str, Any] = {"t": now}
            for name, process in self.processes.items():
                times = process.cpu_times()
                row[name] = times.user + times.system
            self.rows.append(row)
            for path in self.store.glob("kafka.*"):
                try:
                    stat = path.stat()
                except FileNotFoundError:  # kafka.tmp renamed between glob and stat
                    continue
                if seen.get(path.name) != (stat.st_size, stat.st_mtime):
                    seen[path.name] = (stat.st_size, stat.st_mtime)
                    self.writes.append((now, path.name, stat.st_size))


def _cores(rows: list[dict[str, Any]], name: str, start: float, end: float) -> float:
    inside = [r for r in rows if start <= r["t"] < end]
    if len(inside) < 2:
        return 0.0
    return round((inside[-1][name] - inside[0][name]) / (inside[-1]["t"] - inside[0]["t"]), 2)


def _quantile(ordered: list[float], q: float) -> float:
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * q))], 1)


def trace(rate: float, seconds: float, models: Path) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fraudlens-stall-") as tmp:
        stack = Stack(root=Path(tmp), models_dir=models)
        try:
            stack.start_broker()
            start_scorer(stack)
            processes = {
                "shim": psutil.Process(stack.processes[0].pid),
                "noida": stack.noida(),
                "scorer": psutil.Process(stack.processes[1].pid),
            }
            sampler = _Sampler(processes, Path(tmp) / "data" / "broker" / "noida")
            sampler.start()
            run = _paced(stack, rate, seconds, "transactions", 5, "verdicts", warmup_s=0)
            sampler.stop.set()
            sampler.join(5)
        finally:
            stack.stop_all()
    first = run["first_sent_at"]
    by_second: dict[int, list[float]] = defaultdict(list)
    for index, latency in enumerate(run["samples"]):  # sent in order, 1/rate apart
        by_second[int(index / rate)].append(latency)
    seconds_rows = []
    for second in sorted(by_second):
        ordered = sorted(by_second[second])
        begin = first + second
        seconds_rows.append({
            "second": second, "verdicts": len(ordered), "p50_ms": _quantile(ordered, 0.5),
            "p99_ms": _quantile(ordered, 0.99), "max_ms": round(ordered[-1], 1),
            **{f"{name}_cores": _cores(sampler.rows, name, begin, begin + 1) for name in processes},
            "store_writes": [(round(at - first, 1), name, size) for at, name, size in sampler.writes
                             if begin <= at < begin + 1],
        })  # fmt: skip
    return {"rate": rate, "seconds": seconds, "per_second": seconds_rows, "started_at": first}


def summary(result: dict[str, Any], settle_s: float, mark_ms: float) -> dict[str, Any]:
    rows = [r for r in result["per_second"] if settle_s <= r["second"] < result["seconds"] - 2]
    return {
        "seconds": [rows[0]["second"], rows[-1]["second"]] if rows else [],
        "seconds_with_max_over_mark": sum(r["max_ms"] > mark_ms for r in rows),
        "mark_ms": mark_ms,
        "worst_second_max_ms": max((r["max_ms"] for r in rows), default=None),
        "median_of_seconds_p99_ms": sorted(r["p99_ms"] for r in rows)[len(rows) // 2] if rows else None,
        "noida_cores_mean": round(sum(r["noida_cores"] for r in rows) / len(rows), 2) if rows else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.stall_trace", description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--seconds", type=float, default=100.0)
    parser.add_argument("--settle", type=float, default=30.0, help="seconds left out of the summary")
    parser.add_argument("--mark-ms", type=float, default=100.0)
    parser.add_argument("--models", type=Path, default=ROOT / "models")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results-stall-trace.json")
    args = parser.parse_args()
    if not (args.rate > 0 and args.seconds > args.settle >= 0 and args.mark_ms > 0):
        parser.error("need --rate > 0, --seconds > --settle >= 0 and --mark-ms > 0")
    result = trace(args.rate, args.seconds, args.models)
    result["summary"] = summary(result, args.settle, args.mark_ms)
    for row in result["per_second"]:
        mark = "  <==" if row["max_ms"] > args.mark_ms else ""
        print(
            f"{row['second']:4d} n={row['verdicts']:5d} p50={row['p50_ms']:7.1f} p99={row['p99_ms']:7.1f} "
            f"max={row['max_ms']:7.1f} shim={row['shim_cores']:.2f} noida={row['noida_cores']:.2f} "
            f"scorer={row['scorer_cores']:.2f}{mark}"
        )
    print(json.dumps(result["summary"]))
    args.out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
