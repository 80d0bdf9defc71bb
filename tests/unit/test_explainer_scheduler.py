"""The aging scheduler: priority order, FIFO per priority, and the aging bound (pure, no broker)."""

from __future__ import annotations

import math
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.explain.scheduler import AgingScheduler, BatchSizer

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
    scheduler.put("high", "newer high", 29.9)
    assert [(q.item, q.aged) for q in scheduler.take(1, now=30.0)] == [("low", True)]  # the bound


def test_capacity_is_per_priority() -> None:
    scheduler: AgingScheduler[int] = AgingScheduler(AGING, capacity=2)
    scheduler.put("low", 1, 0.0)
    assert scheduler.has_room("low")
    scheduler.put("low", 2, 0.0)
    assert not scheduler.has_room("low") and scheduler.has_room("high")
    scheduler.put("high", 3, 0.0)
    assert [q.item for q in scheduler.take(10, now=0.0)] == [3, 1, 2]
    assert scheduler.has_room("low")


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


# -- the bounded share for aged work (the explainer's default, FRAUDLENS_EXPLAIN_AGED_SHARE) ------


def test_aged_work_gets_its_share_and_fresh_high_work_the_rest() -> None:
    scheduler: AgingScheduler[str] = AgingScheduler(AGING, aged_share=0.25)
    for i in range(10):
        scheduler.put("low", f"l{i}", float(i))  # all aged at now=100
    for i in range(10):
        scheduler.put("high", f"h{i}", 99.0)
    assert scheduler.aged_slots(8) == 2
    taken = scheduler.take(8, now=100.0)
    assert [(q.item, q.aged) for q in taken] == [
        ("l0", True), ("l1", True), *[(f"h{i}", False) for i in range(6)]
    ]  # fmt: skip
    assert [q.item for q in scheduler.take(4, now=100.0)] == ["l2", "h6", "h7", "h8"]
    # Once fresh higher-priority work runs out, the aged backlog fills the rest of the batch.
    assert [q.item for q in scheduler.take(8, now=100.0)] == [
        "l3",
        "l4",
        "h9",
        *[f"l{i}" for i in range(5, 10)],
    ]


def test_share_one_is_the_strict_rule_and_bad_shares_are_refused() -> None:
    scheduler: AgingScheduler[str] = AgingScheduler(AGING, aged_share=1.0)
    scheduler.put("low", "old", 0.0)
    scheduler.put("high", "new", 50.0)
    assert [q.item for q in scheduler.take(1, now=50.0)] == ["old"]
    for share in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError):
            AgingScheduler(AGING, aged_share=share)


@settings(max_examples=200, deadline=None)
@given(
    arrivals=st.lists(
        st.tuples(st.sampled_from(["high", "normal", "low"]), st.floats(0, 2)), min_size=1, max_size=120
    ),
    batch=st.integers(1, 8),
    share=st.sampled_from([0.1, 0.25, 0.5]),
    seed=st.integers(0, 1000),
)
def test_bounded_share_protects_fresh_work_and_never_starves_aged_work(
    arrivals: list[tuple[str, float]], batch: int, share: float, seed: int
) -> None:
    """Simulated overload (arrivals faster than batches). (1) When fresh work of some priority
    is left waiting after a batch, the batch held at most the aged quota of lower-priority
    requests. (2) A request starts within ceil((requests queued before it and still waiting + 1)
    / quota) batches of reaching the aging bound. (3) FIFO per priority."""
    aging = 6.0
    rng = random.Random(seed)
    scheduler: AgingScheduler[int] = AgingScheduler(aging, aged_share=share)
    quota = scheduler.aged_slots(batch)
    rank = {"high": 0, "normal": 1, "low": 2}
    queued_at: dict[int, float] = {}
    priority: dict[int, str] = {}
    started: dict[int, int] = {}
    aged_in_batch: dict[int, tuple[int, int]] = {}  # id -> (batch it aged in, older still waiting)
    inside: dict[int, float] = {}  # what the scheduler holds, by the test's own account: id -> queued at
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
            inside[index] = at
        waiting = [(at, item) for item, at in inside.items()]
        for at, item in waiting:
            if now - at >= aging and item not in aged_in_batch:
                older = sum(other <= at for other, _ in waiting) - 1  # equal times count as older
                aged_in_batch[item] = (batch_no, older)
        taken = scheduler.take(batch, now)
        for queued in taken:
            started[queued.item] = batch_no
            del inside[queued.item]
        assert len(scheduler) == len(inside)
        for fresh in (item for item, at in inside.items() if now - at < aging):
            lower = [q for q in taken if rank[q.priority] > rank[priority[fresh]]]
            assert len(lower) <= quota, (fresh, lower)
        batch_no += 1
        now += rng.uniform(1, 3)
    for item, (aged_at, older) in aged_in_batch.items():
        assert started[item] - aged_at <= math.ceil((older + 1) / quota) - 1, (item, aged_at, older)
    for prio in ("high", "normal", "low"):
        ids = [i for i in sorted(started) if priority[i] == prio]
        assert [started[i] for i in ids] == sorted(started[i] for i in ids)


# -- batch sizes from a time budget --------------------------------------------------------------


def test_batch_sizer_follows_the_measured_cost_per_row() -> None:
    sizer = BatchSizer(budget_s=0.060, max_items=64, min_items=8, smoothing=1.0)
    assert sizer.size() == 64  # nothing measured yet
    sizer.measured(16, 0.048)  # 3 ms per row
    assert sizer.size() == 20
    sizer.measured(16, 0.008)  # 0.5 ms per row: capped
    assert sizer.size() == 64
    sizer.measured(4, 0.2)  # 50 ms per row: floored
    assert sizer.size() == 8
    sizer.measured(0, 1.0)  # nothing computed (all cache hits): ignored
    assert sizer.size() == 8


def test_batch_sizer_smooths_and_refuses_bad_bounds() -> None:
    sizer = BatchSizer(budget_s=0.1, max_items=100, smoothing=0.5)
    sizer.measured(10, 0.01)  # 1 ms
    sizer.measured(10, 0.03)  # 3 ms -> average 2 ms
    assert sizer.size() == 50
    for bad in ({"budget_s": 0, "max_items": 4}, {"budget_s": 1, "max_items": 4, "min_items": 5}):
        with pytest.raises(ValueError):
            BatchSizer(**bad)  # type: ignore[arg-type]
