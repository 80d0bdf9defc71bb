"""The gap monitor's arithmetic: windows, percentiles, rates and the scaling hint."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import numpy as np
import pytest

from app.ops.lag_monitor import GapWindow, percentiles, render, scaling_hint


def stamp(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


def update(status: str, priority: str, at: float, gap_ms: float | None = None) -> dict[str, Any]:
    timings: dict[str, Any] = {"verdict_at": stamp(at - 1), "queued_at": stamp(at)}
    if status in ("complete", "failed"):
        timings["completed_at"] = stamp(at)
        if gap_ms is not None:
            timings["verdict_to_complete_ms"] = gap_ms
    return {
        "transaction_id": "t",
        "status": status,
        "priority": priority,
        "updated_at": stamp(at),
        "timings": timings,
    }


def test_percentiles_match_numpy_and_are_none_when_empty() -> None:
    values = [5.0, 1.0, 9.0, 3.0, 7.0]
    got = percentiles(values)
    assert got == {f"p{q}": pytest.approx(float(np.percentile(values, q))) for q in (50, 95, 99)}
    assert percentiles([]) == {"p50": None, "p95": None, "p99": None}


def test_window_keeps_gaps_per_priority_and_evicts_old_updates() -> None:
    window = GapWindow(window_s=60)
    window.add(update("complete", "high", 100, gap_ms=200))
    window.add(update("complete", "high", 150, gap_ms=400))
    window.add(update("complete", "low", 150, gap_ms=9000))
    window.add(update("failed", "low", 150))  # counts as finished, has no gap
    window.add(update("calculating", "high", 150))  # neither routed nor finished
    window.add(update("pending", "normal", 150))
    window.evict(now=170)  # drops the update at t=100
    gaps = window.gaps()
    assert gaps["high"]["n"] == 1 and gaps["high"]["p50"] == 400
    assert gaps["low"]["n"] == 1 and gaps["normal"]["n"] == 0 and gaps["normal"]["p50"] is None
    assert window.rates(now=170, since=0) == (pytest.approx(1 / 60), pytest.approx(3 / 60))
    assert window.rates(now=170, since=160) == (pytest.approx(1 / 10), pytest.approx(3 / 10))


@pytest.mark.parametrize(
    "bad",
    [
        {"status": "complete"},
        {"status": "complete", "priority": "urgent"},
        {"status": "pending", "priority": "high"},
    ],
)
def test_malformed_updates_are_counted_not_fatal(bad: dict[str, Any]) -> None:
    window = GapWindow(window_s=60)
    window.add(bad)
    assert window.ignored == 1 and not window.finished and not window.routed


def test_hint_keeps_up_with_the_input_and_drains_the_backlog_in_time() -> None:
    # 2 explainers finish 100/s together (50/s each); 80/s arrive; 3,000 waiting; target 60 s:
    # needed 80 + 50 = 130/s -> 3 processes; at the current rate the backlog drains in 150 s.
    hint = scaling_hint(backlog=3000, in_rate=80, out_rate=100, processes=2, target_s=60)
    assert hint["per_process_per_s"] == 50 and hint["processes_needed"] == 3
    assert hint["drain_s_at_current_rate"] == 150


def test_hint_when_the_backlog_grows_or_nothing_was_measured() -> None:
    growing = scaling_hint(backlog=100, in_rate=200, out_rate=100, processes=1, target_s=60)
    assert growing["processes_needed"] == 3 and growing["drain_s_at_current_rate"] is None
    assert "grows" in growing["reason"]
    assert scaling_hint(0, 0, 0, 0, 60)["reason"] == "no explainer running"
    assert scaling_hint(10, 5, 0, 2, 60)["processes_needed"] is None
    assert scaling_hint(0, 10, 10, 1, 60)["processes_needed"] == 1


def test_render_shows_every_priority_and_the_hint() -> None:
    window = GapWindow(window_s=60)
    window.add(update("complete", "high", 100, gap_ms=250))
    snapshot = {
        "window_s": 60, "queue_depth": {"high": 2, "normal": 0, "low": 1500}, "backlog": 1502,
        "gap_ms": window.gaps(), "in_per_s": 10.0, "out_per_s": 20.0, "explainers": 1, "target_s": 60,
        "hint": scaling_hint(1502, 10, 20, 1, 60),
    }  # fmt: skip
    text = render(snapshot)
    assert "high" in text and "1,500" in text and "250 ms" in text and "explainer(s)" in text


def test_requests_in_flight_are_counted_from_the_updates() -> None:
    """Requests handed straight to an explainer never reach explain.<priority>: the depth counts
    the transactions whose latest update is pending or calculating."""
    window = GapWindow(60)
    at = "2026-12-05T07:00:00.000000Z"
    timings = {"verdict_at": at, "queued_at": at, "started_at": at, "completed_at": at}
    for txid, priority, statuses in (
        ("a", "high", ("pending",)),
        ("b", "low", ("pending", "calculating")),
        ("c", "low", ("pending", "calculating", "complete")),
        ("d", "normal", ("pending", "calculating", "failed")),
    ):
        for status in statuses:
            window.add({"transaction_id": txid, "status": status, "priority": priority, "timings": timings})
    assert window.waiting() == {"high": 1, "normal": 0, "low": 1}


def test_each_kind_has_its_own_gaps_and_requests_in_flight() -> None:
    """Issue 20: a counterfactual's updates (same transaction, same priority) neither end the
    contributions' flight nor enter their gaps; each kind is reported on its own."""
    window = GapWindow(60)

    def of(kind: str | None, status: str, gap: float | None = None) -> dict[str, Any]:
        out = {**update(status, "high", 100, gap_ms=gap), "transaction_id": "tx-1"}
        return out if kind is None else {**out, "kind": kind}

    window.add(of(None, "pending"))
    window.add(of("counterfactual", "pending"))
    window.add(of(None, "complete", 40.0))
    assert window.waiting() == {"high": 1, "normal": 0, "low": 0}  # the counterfactual still waits
    assert window.waiting("contributions")["high"] == 0 and window.waiting("counterfactual")["high"] == 1
    window.add(of("counterfactual", "complete", 900.0))
    assert window.waiting() == {"high": 0, "normal": 0, "low": 0}
    assert window.gaps()["high"]["n"] == 1 and window.gaps()["high"]["p50"] == 40.0
    assert window.gaps("counterfactual")["high"]["p50"] == 900.0
    assert window.kinds() == ["contributions", "counterfactual"]
    snapshot = {
        "window_s": 60, "queue_depth": {"high": 0, "normal": 0, "low": 0}, "backlog": 0,
        "gap_ms": window.gaps(), "in_per_s": 1.0, "out_per_s": 1.0, "explainers": 1, "target_s": 60,
        "hint": scaling_hint(0, 1, 1, 1, 60),
        "kinds": {k: {"gap_ms": window.gaps(k), "in_flight": window.waiting(k)} for k in window.kinds()},
    }  # fmt: skip
    text = render(snapshot)
    assert "counterfactual:" in text and "900 ms" in text and "40 ms" in text
