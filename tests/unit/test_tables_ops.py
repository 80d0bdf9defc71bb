"""Table inspection's pure parts: filters, ordering, stats, --since parsing."""

from __future__ import annotations

import time

import pytest

from app.ops.table_scan import TABLES, Snapshot, UnknownTable, scan, since_epoch, spec_of, stats

EXPLANATIONS = TABLES["explanations"]


def row(status: str, priority: str, verdict_at: str, cache_hit: bool = False) -> dict[str, object]:
    return {
        "status": status,
        "priority": priority,
        "timings": {"verdict_at": verdict_at},
        "cache_hit": cache_hit,
    }


SNAPSHOT = Snapshot(
    rows={
        "a": row("complete", "high", "2026-11-29T10:00:00Z", cache_hit=True),
        "b": row("complete", "low", "2026-11-29T10:00:02Z"),
        "c": row("pending", "low", "2026-11-29T10:00:01Z"),
        "d": "not json",
    },
    partition_of={"a": 0, "b": 2, "c": 2, "d": 1},
    partitions=3,
    unreadable=1,
)


def test_scan_filters_and_orders_newest_first() -> None:
    assert [r["key"] for r in scan(SNAPSHOT, EXPLANATIONS)] == ["b", "c", "a", "d"]
    assert [r["key"] for r in scan(SNAPSHOT, EXPLANATIONS, status="complete")] == ["b", "a"]
    assert [r["key"] for r in scan(SNAPSHOT, EXPLANATIONS, priority="low", limit=1)] == ["b"]
    since = since_epoch("2026-11-29T10:00:01Z")
    assert [r["key"] for r in scan(SNAPSHOT, EXPLANATIONS, since=since)] == ["b", "c"]


def test_stats_counts_keys_per_partition_statuses_and_cache_hits() -> None:
    got = stats(SNAPSHOT, EXPLANATIONS)
    assert got["keys"] == 4 and got["keys_per_partition"] == {"0": 1, "1": 1, "2": 2}
    assert got["status"] == {"complete": 2, "pending": 1} and got["cache_hit_rate"] == 0.5
    assert got["unreadable_values"] == 1


def test_kinds_are_filtered_and_counted_apart() -> None:
    """Issue 20: a counterfactual row (key ``id#counterfactual``, ``kind`` field) is found by
    ``--kind``, counted per kind, and left out of the cache's hit rate (the cache is SHAP's)."""
    counterfactual = {**row("complete", "high", "2026-11-29T10:00:03Z"), "kind": "counterfactual"}
    snapshot = Snapshot(
        rows={**SNAPSHOT.rows, "a#counterfactual": counterfactual},
        partition_of={**SNAPSHOT.partition_of, "a#counterfactual": 0},
        partitions=3,
        unreadable=1,
    )
    assert [r["key"] for r in scan(snapshot, EXPLANATIONS, kind="counterfactual")] == ["a#counterfactual"]
    assert [r["key"] for r in scan(snapshot, EXPLANATIONS, kind="contributions")] == ["b", "c", "a"]
    got = stats(snapshot, EXPLANATIONS)
    assert got["kinds"] == {"contributions": {"complete": 2, "pending": 1}, "counterfactual": {"complete": 1}}
    assert got["cache_hit_rate"] == 0.5


def test_since_takes_durations_and_iso_times() -> None:
    assert abs(since_epoch("15m") - (time.time() - 900)) < 5
    assert since_epoch("2026-11-29T10:00:00") == since_epoch("2026-11-29T10:00:00+00:00")
    with pytest.raises(ValueError, match="neither"):
        since_epoch("yesterday")


def test_unknown_table_names_the_known_ones() -> None:
    with pytest.raises(UnknownTable, match="predictions, card_activity"):
        spec_of("users")
