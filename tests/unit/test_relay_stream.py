"""The relay reader's hand-over to the loop (one batch per turn, so clients' writers keep up with
a burst) and its catching-up bookkeeping (``ready`` only once the history is read). No broker:
the consumer is built but never asked for records here."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest

from app.relay.feed import FeedChange
from app.relay.outbox import Outbox
from app.relay.stream import MAX_BATCH, MAX_BATCHES_IN_FLIGHT, Record, StreamReader
from app.settings import RelaySettings
from tests.unit.kafka_fakes import FakeMessage as Message


@pytest.fixture
def loop() -> Iterator[asyncio.AbstractEventLoop]:
    loop = asyncio.new_event_loop()
    yield loop
    loop.close()


def reader_on(loop: asyncio.AbstractEventLoop, deliver: object) -> StreamReader:
    settings = RelaySettings(broker="kafka://127.0.0.1:1")  # never contacted
    return StreamReader(settings, loop, deliver)  # type: ignore[arg-type]


def test_a_burst_of_batches_reaches_a_reading_client_without_overflowing_its_queue(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Every batch the reader may have in flight is already waiting when the loop gets to them
    (a relay that fell behind): the client's writer still takes each batch's frames before the
    next batch is fanned out, so a queue of one batch and a bit never overflows."""
    outbox = Outbox(limit=MAX_BATCH + 10)
    delivered: list[int] = []
    taken: list[int] = []

    def deliver(records: list[Record]) -> None:
        delivered.append(len(records))
        outbox.offer_many([b"frame"] * len(records))

    async def writer() -> None:
        while (entries := await outbox.take()) is not None:
            taken.append(len(entries))

    reader = reader_on(loop, deliver)

    async def run() -> None:
        write = asyncio.create_task(writer())
        await asyncio.sleep(0)  # the writer waits for its first frames
        for _ in range(MAX_BATCHES_IN_FLIGHT):
            reader._hand_over([("verdicts", b"{}", 0)] * MAX_BATCH)
        pump = asyncio.create_task(reader.pump())
        while len(delivered) < MAX_BATCHES_IN_FLIGHT:
            await asyncio.sleep(0)
        await asyncio.sleep(0)
        pump.cancel()
        write.cancel()

    try:
        loop.run_until_complete(asyncio.wait_for(run(), 10))
    finally:
        reader.consumer.close()
    assert not outbox.lagging, f"dropped as lagging; writer took {taken}"
    assert sum(taken) == MAX_BATCHES_IN_FLIGHT * MAX_BATCH and max(taken) <= MAX_BATCH, taken
    # every slot came back: the reader thread may hand over as many batches again
    assert all(reader.slots.acquire(blocking=False) for _ in range(MAX_BATCHES_IN_FLIGHT))


def test_caught_up_once_every_partition_reached_its_end_at_assignment() -> None:
    reader = reader_on(asyncio.new_event_loop(), lambda records: None)
    try:
        reader.catching_up = {("verdicts", 0): 3, ("verdicts", 1): 1, ("explanation.updates", 0): 2}
        assert not reader._note_reached([Message("verdicts", 0, 0), Message("verdicts", 0, 1)])  # type: ignore[list-item]
        assert set(reader.catching_up) == {("verdicts", 0), ("verdicts", 1), ("explanation.updates", 0)}
        # a partition's last record before its end, and one written after it, both count
        assert not reader._note_reached([Message("verdicts", 1, 0), Message("explanation.updates", 0, 5)])  # type: ignore[list-item]
        assert set(reader.catching_up) == {("verdicts", 0)}
        assert reader._note_reached([Message("verdicts", 0, 2)])  # type: ignore[list-item]
    finally:
        reader.consumer.close()
        reader.loop.close()


def test_ready_only_once_the_batch_that_ends_the_catch_up_is_delivered(
    loop: asyncio.AbstractEventLoop,
) -> None:
    """Read is not delivered: batches wait for the loop, and ``ready`` must not run ahead of them."""
    delivered: list[int] = []
    reader = reader_on(loop, lambda records: delivered.append(len(records)))
    ready_after: list[int] = []

    async def run() -> None:
        reader._hand_over([("verdicts", b"{}", 0)] * 3)
        reader._hand_over([("verdicts", b"{}", 0)] * 2, reached=True)
        reader._hand_over([("verdicts", b"{}", 0)] * 4)  # live records after the catch-up
        pump = asyncio.create_task(reader.pump())
        await reader.caught_up.wait()
        ready_after.append(sum(delivered))
        while len(delivered) < 3:
            await asyncio.sleep(0)
        pump.cancel()

    try:
        loop.run_until_complete(asyncio.wait_for(run(), 10))
    finally:
        reader.consumer.close()
    assert ready_after == [5], ready_after


class _Watermarks:
    """A consumer whose partitions start at ``low`` (retention removed what was before)."""

    def __init__(self, low: dict[tuple[str, int], int]) -> None:
        self.low = low

    def get_watermark_offsets(self, tp: Any, timeout: float) -> tuple[int, int]:
        return self.low[(tp.topic, tp.partition)], 10_000

    def close(self) -> None:
        pass


def test_a_partition_whose_records_retention_removed_has_nothing_left_to_catch_up_on() -> None:
    """Its end at assignment can no longer be read: once its earliest offset has passed it, the
    partition is caught up (otherwise the relay would never say ready)."""
    reader = reader_on(asyncio.new_event_loop(), lambda records: None)
    reader.consumer.close()
    reader.consumer = _Watermarks({("verdicts", 0): 40, ("verdicts", 1): 3})  # type: ignore[assignment]
    reader.catching_up = {("verdicts", 0): 40, ("verdicts", 1): 7}
    assert not reader._note_idle()
    assert set(reader.catching_up) == {("verdicts", 1)}
    reader.consumer.low[("verdicts", 1)] = 9  # type: ignore[attr-defined]
    assert not reader._note_idle()  # asked at most once a second
    reader._idle_checked -= 1.0
    assert reader._note_idle() and not reader.catching_up
    reader.loop.close()


class _Failing(_Watermarks):
    def poll(self, timeout: float) -> Any:
        raise RuntimeError("the consumer broke")


def test_a_reader_that_dies_tells_every_client_its_feed_stopped() -> None:
    """A dead reader must not leave the relay serving stale data silently: the relay's feed
    status goes ``interrupted`` with the reason (what every client is sent)."""
    loop = asyncio.new_event_loop()
    changes: list[FeedChange] = []
    reader = StreamReader(RelaySettings(broker="kafka://127.0.0.1:1"), loop, lambda r: None, changes.append)
    reader.consumer.close()
    reader.consumer = _Failing({})  # type: ignore[assignment]
    with pytest.raises(RuntimeError):
        reader.run()
    loop.run_until_complete(asyncio.sleep(0))  # what the thread scheduled on the loop
    loop.close()
    assert [(c.state, "the consumer broke" in c.reason) for c in changes] == [("interrupted", True)]
