"""bench.stall_trace's summary: the settle seconds and the last two are left out, marks counted."""

from __future__ import annotations

from bench.stall_trace import summary


def _row(second: int, max_ms: float, p99_ms: float = 10.0, noida: float = 0.5) -> dict[str, object]:
    return {"second": second, "max_ms": max_ms, "p99_ms": p99_ms, "noida_cores": noida}


def test_summary_counts_marked_seconds_after_the_settle_only() -> None:
    rows = [_row(0, 900.0), _row(1, 150.0), _row(2, 50.0), _row(3, 120.0, p99_ms=30.0), _row(4, 20.0),
            _row(5, 999.0)]  # fmt: skip
    result = {"seconds": 6.0, "per_second": rows}

    got = summary(result, settle_s=1.0, mark_ms=100.0)

    assert got["seconds"] == [1, 3]  # 0 settles; 4 and 5 are the run's last two (verdicts still arriving)
    assert got["seconds_with_max_over_mark"] == 2
    assert got["worst_second_max_ms"] == 150.0
    assert got["median_of_seconds_p99_ms"] == 10.0
    assert got["noida_cores_mean"] == 0.5
