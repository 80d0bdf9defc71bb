"""The aging scheduler: priority order, FIFO per priority, and the aging bound (pure, no broker)."""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.explain.scheduler import AgingScheduler

AGING = 30.0


def test_high_before_normal_before_low() -> None:
    scheduler: AgingScheduler[str] = AgingScheduler(AGING)
    scheduler.put("low", "l1", 0.0)
    scheduler.put("normal", "n1", 1.0)
    scheduler.put("high", "h1", 2.0)
    scheduler.put("low", "l2", 3.0)
    taken = scheduler.take(10, now=4.0)
    assert [q.item for q in taken] == ["h1", "n1", "l1", "l2"]
    assert not any(q.aged for q in taken)


def test_batches_are_cut_at_max_items() -> None:
    scheduler: AgingScheduler[int] = AgingScheduler(AGING)
    for i in range(5):
        scheduler.put("low", i, float(i))
    assert [q.item for q in scheduler.take(2, now=5.0)] == [0, 1]
    assert [q.item for q in scheduler.take(2, now=5.0)] == [2, 3]
    assert len(scheduler) == 1


def test_an_aged_request_goes_before_newer_high_priority_work() -> None:
    scheduler: AgingScheduler[str] = AgingScheduler(AGING)
    scheduler.put("low", "old-low", 0.0)
    scheduler.put("normal", "old-normal", 5.0)
    for i in range(3):
        scheduler.put("high", f"h{i}", 31.0 + i)
    taken = scheduler.take(2, now=40.0)  # low waited 40 s, normal 35 s: both aged
    assert [(q.item, q.aged) for q in taken] == [("old-low", True), ("old-normal", True)]
    assert [q.item for q in scheduler.take(10, now=40.0)] == ["h0", "h1", "h2"]


def test_not_yet_aged_low_waits_for_high() -> None:
    scheduler: AgingScheduler[str] = AgingScheduler(AGING)
    scheduler.put("low", "low", 0.0)
    scheduler.put("high", "high", 10.0)
    assert [q.item for q in scheduler.take(1, now=29.9)] == ["high"]
    assert scheduler.next_aging_at() == pytest.approx(30.0)


def test_capacity_and_drop() -> None:
    scheduler: AgingScheduler[int] = AgingScheduler(AGING, capacity=2)
    scheduler.put("low", 1, 0.0)
    assert scheduler.has_room("low")
    scheduler.put("low", 2, 0.0)
    assert not scheduler.has_room("low") and scheduler.has_room("high")
    scheduler.put("high", 3, 0.0)
    assert scheduler.drop(lambda item: item % 2 == 1) == [3, 1]
    assert [q.item for q in scheduler.take(10, now=0.0)] == [2]


def test_unknown_priority_and_bound_are_refused() -> None:
    with pytest.raises(ValueError):
        AgingScheduler(0.0)
    with pytest.raises(ValueError):
        AgingScheduler[int](AGING).put("urgent", 1, 0.0)


@settings(max_examples=200, deadline=None)
@given(
    arrivals=st.lists(
        st.tuples(st.sampled_from(["high", "normal", "low"]), st.floats(0, 5)), min_size=1, max_size=80
    ),
    batch=st.integers(1, 8),
    seed=st.integers(0, 1000),
)
def test_no_request_is_passed_by_work_queued_more_than_the_bound_later(
    arrivals: list[tuple[str, float]], batch: int, seed: int
) -> None:
    """Simulated: requests arrive over time, batches take 1-5 s. If B was queued more than the
    aging bound after A, B never starts in an earlier batch than A; FIFO holds per priority."""
    aging = 10.0
    rng = random.Random(seed)
    scheduler: AgingScheduler[int] = AgingScheduler(aging)
    queued_at, priority, started = {}, {}, {}
    clock, pending = 0.0, []
    for index, (prio, gap) in enumerate(arrivals):
        clock += gap
        pending.append((clock, index, prio))
    now, batch_no = 0.0, 0
    while pending or len(scheduler):
        while pending and pending[0][0] <= now:
            at, index, prio = pending.pop(0)
            scheduler.put(prio, index, at)
            queued_at[index], priority[index] = at, prio
        for queued in scheduler.take(batch, now):
            started[queued.item] = batch_no
        batch_no += 1
        now += rng.uniform(1, 5)
    for a in started:
        for b in started:
            if queued_at[b] - queued_at[a] > aging:
                assert started[a] <= started[b], (a, b)
    for prio in ("high", "normal", "low"):
        ids = [i for i in sorted(started) if priority[i] == prio]
        assert [started[i] for i in ids] == sorted(started[i] for i in ids)
