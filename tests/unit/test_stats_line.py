"""The scorer's and the router's stats line (``app.runtime.stats.BatchTimings``), fake clock."""

from __future__ import annotations

from app.runtime.stats import BatchTimings


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_a_line_sums_its_window_then_starts_a_new_one() -> None:
    clock = Clock()
    timings = BatchTimings(10.0, clock)
    timings.add(30, score=0.003, apply=0.010)
    timings.add(10, score=0.001, apply=0.002)
    clock.now += 9.9
    assert not timings.due()
    clock.now += 0.1
    assert timings.due()
    # 40 events / 2 batches; score (3 + 1) / 2 = 2.0 ms, apply (10 + 2) / 2 = 6.0 ms per batch;
    # per event: score 4 ms / 40 = 100 µs, apply 12 ms / 40 = 300 µs
    assert timings.line() == (
        "40 events in 2 batches (mean 20.0) over 10 s; ms/batch: apply 6.0, score 2.0; "
        "µs/event: apply 300, score 100"
    )
    assert not timings.due() and (timings.batches, timings.events, dict(timings.seconds)) == (0, 0, {})
    clock.now += 12
    assert timings.line() == "no batches in 12 s"
