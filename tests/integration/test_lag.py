"""`fraudlens lag` against the real stack: backlog seen while it exists, zero once drained, and
gap percentiles equal to those computed independently from `explanation.updates`."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import numpy as np
import orjson

from app.model.generator import generate_transactions
from bench.records import end_offsets
from tests.integration.harness import REPO, Stack, wait_until

COUNT = 2000


def lag(stack: Stack, *args: str) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "app.cli.main", "lag", "--json", "--window", "3600", *args],
        cwd=REPO, env=stack.env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    snapshot: dict[str, Any] = json.loads(done.stdout)
    return snapshot


def test_lag_sees_the_backlog_then_zero_and_matches_the_updates(stack: Stack) -> None:
    stack.start_worker("scorer")
    stack.produce_transactions(generate_transactions(COUNT, seed=61))
    stack.reader("verdicts").read_until(lambda m: len(m) >= COUNT, 120, "every verdict")
    # Starts with the whole stream of verdicts to route and explain, every request handed straight
    # to it (a bound above COUNT): none reaches explain.<priority>, so only the in-flight count
    # from the updates can show the backlog.
    stack.start_worker("explainer", FRAUDLENS_EXPLAIN_HANDOVER_MAX=str(COUNT))
    seen: list[dict[str, Any]] = []

    def backlog_seen() -> bool:
        seen.append(lag(stack))
        return seen[-1]["backlog"] > 0

    wait_until(backlog_seen, 120, "lag to report a backlog", interval=0)
    assert seen[-1]["explainers"] == 1
    updates = stack.reader("explanation.updates")
    updates.read_until(
        lambda m: sum(1 for x in m if orjson.loads(x.value())["status"] == "complete") >= COUNT,
        300,
        "every explanation complete",
    )
    wait_until(lambda: lag(stack)["backlog"] == 0, 60, "lag to report an empty queue")
    final = lag(stack)
    assert final["queue_depth"] == {"high": 0, "normal": 0, "low": 0}
    published = end_offsets(stack.bootstrap)
    assert not any(published.get(f"explain.{p}", 0) for p in ("high", "normal", "low")), published
    assert final["out_per_s"] > 0 and final["hint"]["processes_needed"] == 1
    gaps: dict[str, list[float]] = {"high": [], "normal": [], "low": []}
    for update in updates.values():
        if update["status"] == "complete":
            gaps[update["priority"]].append(update["timings"]["verdict_to_complete_ms"])
    for priority, values in gaps.items():
        reported = final["gap_ms"][priority]
        assert reported["n"] == len(values), priority
        for q in (50, 95, 99):
            expected = float(np.percentile(values, q)) if values else None
            got = reported[f"p{q}"]
            assert (got is None and expected is None) or abs(got - expected) < 1e-6, (priority, q, got)
