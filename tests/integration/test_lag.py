"""`fraudlens lag` against the real stack: backlog seen while it exists, zero once drained, and
gap percentiles equal to those computed independently from `explanation.updates`."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import numpy as np

from app.model.generator import generate_transactions
from app.records.kinds import CONTRIBUTIONS, COUNTERFACTUAL
from bench.records import end_offsets
from tests.integration.harness import REPO, Stack, of_kind, wait_until

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

    def complete(kind: str) -> list[dict[str, Any]]:
        return [u for u in of_kind(updates.values(), kind) if u["status"] == "complete"]

    updates.read_until(lambda _: len(complete(CONTRIBUTIONS)) >= COUNT, 300, "every explanation complete")
    wait_until(lambda: lag(stack)["backlog"] == 0, 60, "lag to report an empty queue")
    final = lag(stack)
    assert final["queue_depth"] == {"high": 0, "normal": 0, "low": 0}
    updates.read_to_end()
    searched = complete(COUNTERFACTUAL)  # counterfactuals routed beside them (deny and review)
    # Every request handed over, both kinds: none published while the workers' queues had room.
    published = {p: end_offsets(stack.bootstrap).get(f"explain.{p}", 0) for p in ("high", "normal", "low")}
    assert published == {"high": 0, "normal": 0, "low": 0}, published
    assert final["out_per_s"] > 0 and final["hint"]["processes_needed"] == 1
    # gap_ms is the contributions' (as before kinds); other kinds' under "kinds", each its own
    assert set(final["kinds"]) == {CONTRIBUTIONS, *([COUNTERFACTUAL] if searched else [])}, final["kinds"]
    for kind in final["kinds"]:
        _gaps_match(complete(kind), final["kinds"][kind]["gap_ms"])
    _gaps_match(complete(CONTRIBUTIONS), final["gap_ms"])


def _gaps_match(updates: list[dict[str, Any]], reported_by_priority: dict[str, Any]) -> None:
    """The reported gap percentiles per priority equal those of the updates (numpy's)."""
    gaps: dict[str, list[float]] = {"high": [], "normal": [], "low": []}
    for update in updates:
        gaps[update["priority"]].append(update["timings"]["verdict_to_complete_ms"])
    for priority, values in gaps.items():
        reported = reported_by_priority[priority]
        assert reported["n"] == len(values), priority
        for q in (50, 95, 99):
            expected = float(np.percentile(values, q)) if values else None
            got = reported[f"p{q}"]
            assert (got is None and expected is None) or abs(got - expected) < 1e-6, (priority, q, got)
