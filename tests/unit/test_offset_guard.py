"""The offset guard's bookkeeping: every offset once, in order, gaps sought back or accepted."""

from __future__ import annotations

import logging
from typing import Any, ClassVar

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


def test_a_gap_on_a_partition_revoked_while_asking_the_broker_is_dropped() -> None:
    """getmany awaits the broker's earliest offset for a gap; a rebalance revoking the partition
    in that await used to raise KeyError and crash faust's fetcher (found by make chaos)."""
    import asyncio
    from types import SimpleNamespace

    from aiokafka.structs import TopicPartition

    from app.offset_guard import install

    tp = TopicPartition("verdicts", 4)

    class FakeConsumer:
        app = SimpleNamespace(
            tables=SimpleNamespace(changelog_topics=set()),
            topics=SimpleNamespace(acks_enabled_for=lambda topic: True),
        )
        seeks: ClassVar[list[int]] = []

        async def getmany(self, timeout: float) -> Any:
            for offset in (10, 15, 16):  # 11..14 missing: a gap
                yield tp, SimpleNamespace(offset=offset)

        async def earliest_offsets(self, *tps: Any) -> dict[Any, int]:
            await self.on_partitions_revoked({tp})  # the rebalance lands in this await
            return {tp: 0}

        async def seek(self, partition: Any, offset: int) -> None:
            self.seeks.append(offset)

        async def perform_seek(self) -> None:
            pass

        async def on_partitions_revoked(self, revoked: set[Any]) -> None:
            pass

    install(FakeConsumer)
    consumer = FakeConsumer()

    async def drain() -> list[int]:
        consumer._offset_guard = OffsetGuard()  # type: ignore[attr-defined]
        consumer._offset_guard.reset({tp: 10})  # type: ignore[attr-defined]
        return [message.offset async for _, message in consumer.getmany(1.0)]

    assert asyncio.run(drain()) == [10]  # 15 and the rest of the batch are the new owner's
    assert consumer.seeks == []
