"""The offset guard's bookkeeping: every offset once, in order, gaps sought back or accepted."""

from __future__ import annotations

import logging

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.offset_guard import DELIVER, GAP, SKIP, OffsetGuard

TP = ("transactions", 0)
OTHER = ("transactions", 1)


def test_unknown_partition_takes_the_first_record_then_expects_the_next() -> None:
    guard = OffsetGuard()
    assert guard.check(TP, 40) == DELIVER
    assert guard.check(TP, 41) == DELIVER
    assert guard.expected[TP] == 42


def test_record_below_the_expected_offset_is_a_stale_duplicate() -> None:
    guard = OffsetGuard()
    guard.reset({TP: 10})
    assert guard.check(TP, 9) == SKIP
    assert guard.expected[TP] == 10  # a skip changes nothing


def test_record_beyond_the_expected_offset_is_a_gap_and_is_sought_back() -> None:
    """The stale prefetched record after a rebalance: the seek must fetch 10.. again."""
    guard = OffsetGuard()
    guard.reset({TP: 10})
    assert guard.check(TP, 17) == GAP
    assert guard.resolve_gap(TP, 17, earliest=0) == 10
    assert guard.gaps_refetched == 1
    assert [guard.check(TP, o) for o in (10, 11)] == [DELIVER, DELIVER]


def test_gap_that_retention_removed_is_accepted_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    guard = OffsetGuard()
    guard.reset({TP: 10})
    assert guard.check(TP, 50) == GAP
    with caplog.at_level(logging.WARNING):
        assert guard.resolve_gap(TP, 50, earliest=50) is None
    assert "removed by retention" in caplog.text
    assert guard.gaps_accepted == 1 and guard.expected[TP] == 51


def test_gap_partly_removed_by_retention_seeks_to_the_earliest_retained_offset() -> None:
    guard = OffsetGuard()
    guard.reset({TP: 10})
    assert guard.check(TP, 50) == GAP
    assert guard.resolve_gap(TP, 50, earliest=30) == 30


def test_reset_with_unknown_offset_forgets_and_revocation_forgets() -> None:
    guard = OffsetGuard()
    guard.reset({TP: 5, OTHER: 7})
    guard.reset({TP: None})
    assert TP not in guard.expected and guard.check(TP, 99) == DELIVER
    guard.forget([OTHER])
    assert guard.check(OTHER, 3) == DELIVER


def test_partitions_are_independent() -> None:
    guard = OffsetGuard()
    guard.reset({TP: 0, OTHER: 100})
    assert guard.check(TP, 0) == DELIVER
    assert guard.check(OTHER, 0) == SKIP
    assert guard.check(OTHER, 100) == DELIVER


@given(
    start=st.integers(0, 50),
    length=st.integers(1, 60),
    stale=st.lists(st.integers(0, 200), max_size=20),
)
def test_replaying_fetches_with_stale_records_delivers_each_offset_once_in_order(
    start: int, length: int, stale: list[int]
) -> None:
    """Model of the fetch loop: stale records (any offset) arrive before the refetch from the
    committed offset; the guard, seeking back on gaps, delivers start..end exactly once each."""
    end = start + length
    guard = OffsetGuard()
    guard.reset({TP: start})
    delivered: list[int] = []
    position = start
    queue = [o for o in stale if o < end]
    while position < end or queue:
        offset = queue.pop(0) if queue else position
        if not queue and offset == position:
            position += 1
        outcome = guard.check(TP, offset)
        if outcome == DELIVER:
            delivered.append(offset)
        elif outcome == GAP:
            target = guard.resolve_gap(TP, offset, earliest=0)
            assert target is not None
            queue = []  # the seek discards the rest of the stale batch
            position = target
    assert delivered == list(range(start, end))
