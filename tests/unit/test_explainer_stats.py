"""The explainer's stats line: every ``explain_stats_every_s`` and once when a backlog drains,
never once per batch at light load (issue 17, point 3). A fake clock drives it."""

from __future__ import annotations

import logging

import pytest

from app.agents import explaining
from app.explain.scheduler import AgingScheduler

EVERY_S = 10.0
BATCH = 8


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def stats(monkeypatch: pytest.MonkeyPatch) -> tuple[explaining._Stats, FakeClock]:
    monkeypatch.setattr(explaining.settings, "explain_stats_every_s", EVERY_S)
    clock = FakeClock()
    return explaining._Stats(clock=clock), clock


def _lines(caplog: pytest.LogCaptureFixture) -> int:
    return sum("explainer pid" in r.getMessage() for r in caplog.records)


def _batch(stats: explaining._Stats, queue: AgingScheduler[object], clock: FakeClock, dt: float) -> None:
    clock.now += dt
    stats.batches += 1
    stats.log(queue, BATCH)  # type: ignore[arg-type]


def test_light_load_logs_once_per_interval_not_per_batch(
    stats: tuple[explaining._Stats, FakeClock], caplog: pytest.LogCaptureFixture
) -> None:
    """100 batches over 25 s, each taking all there was (the queue empty after every one)."""
    caplog.set_level(logging.INFO, logger=explaining.__name__)
    s, clock = stats
    queue: AgingScheduler[object] = AgingScheduler(aging_s=60)
    for _ in range(100):
        _batch(s, queue, clock, 0.25)
    assert _lines(caplog) == 2  # at 10 s and at 20 s


def test_a_drained_backlog_logs_once_then_the_interval_rules(
    stats: tuple[explaining._Stats, FakeClock], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=explaining.__name__)
    s, clock = stats
    queue: AgingScheduler[object] = AgingScheduler(aging_s=60)
    for i in range(3 * BATCH):
        queue.put("normal", i, clock.now)
    while len(queue):  # a backlog worked off in 3 batches, 1 s each
        queue.take(BATCH, clock.now)
        _batch(s, queue, clock, 1.0)
    assert _lines(caplog) == 1  # "drained", before the interval is up
    for _ in range(20):  # light load again: nothing until the interval since that line passes
        _batch(s, queue, clock, 0.25)
    assert _lines(caplog) == 1
    _batch(s, queue, clock, 6.0)
    assert _lines(caplog) == 2


def test_no_batches_no_line(
    stats: tuple[explaining._Stats, FakeClock], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=explaining.__name__)
    s, clock = stats
    clock.now += 100
    s.log(AgingScheduler(aging_s=60), BATCH)  # type: ignore[arg-type]
    assert _lines(caplog) == 0
