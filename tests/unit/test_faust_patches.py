"""Each patch of ``app.explainer.faust_patches`` against faust-streaming 0.15.3's and aiokafka's own code:
every test here fails with its patch taken out (the failure each gave is noted in the test)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any, ClassVar

import pytest
from aiokafka.consumer.subscription_state import SubscriptionState, TopicPartitionState
from aiokafka.errors import NodeNotReadyError, TopicAuthorizationFailedError
from aiokafka.structs import TopicPartition
from faust.types import TP
from hypothesis import given
from hypothesis import strategies as st

from app.explainer import faust_patches
from app.explainer.faust_patches import DELIVER, GAP, SKIP, OffsetGuard, _offset_guard, install_faust_patches
from app.kafka.outage import BrokerUnreachable
from app.settings import Settings

PARTITION = TopicPartition("explain.normal", 4)

# -- the offset guard: its bookkeeping (the integration test tests/integration/test_faust_rebalance.py
# shows the failure it repairs) ------------------------------------------------------------------

GUARDED = ("verdicts", 0)
OTHER = ("verdicts", 1)


def test_unknown_partition_takes_the_first_record_then_expects_the_next() -> None:
    guard = OffsetGuard()
    assert guard.check(GUARDED, 40) == DELIVER
    assert guard.check(GUARDED, 41) == DELIVER
    assert guard.expected[GUARDED] == 42


def test_record_below_the_expected_offset_is_a_stale_duplicate() -> None:
    guard = OffsetGuard()
    guard.reset({GUARDED: 10})
    assert guard.check(GUARDED, 9) == SKIP
    assert guard.expected[GUARDED] == 10  # a skip changes nothing


def test_record_beyond_the_expected_offset_is_a_gap_and_is_sought_back() -> None:
    """The stale prefetched record after a rebalance: the seek must fetch 10.. again."""
    guard = OffsetGuard()
    guard.reset({GUARDED: 10})
    assert guard.check(GUARDED, 17) == GAP
    assert guard.resolve_gap(GUARDED, 17, earliest=0) == 10
    assert guard.gaps_refetched == 1
    assert [guard.check(GUARDED, o) for o in (10, 11)] == [DELIVER, DELIVER]


def test_gap_that_retention_removed_is_accepted_with_a_warning(caplog: pytest.LogCaptureFixture) -> None:
    guard = OffsetGuard()
    guard.reset({GUARDED: 10})
    assert guard.check(GUARDED, 50) == GAP
    with caplog.at_level(logging.WARNING):
        assert guard.resolve_gap(GUARDED, 50, earliest=50) is None
    assert "removed by retention" in caplog.text
    assert guard.gaps_accepted == 1 and guard.expected[GUARDED] == 51


def test_gap_partly_removed_by_retention_seeks_to_the_earliest_retained_offset() -> None:
    guard = OffsetGuard()
    guard.reset({GUARDED: 10})
    assert guard.check(GUARDED, 50) == GAP
    assert guard.resolve_gap(GUARDED, 50, earliest=30) == 30


def test_reset_with_unknown_offset_forgets_and_revocation_forgets() -> None:
    guard = OffsetGuard()
    guard.reset({GUARDED: 5, OTHER: 7})
    guard.reset({GUARDED: None})
    assert GUARDED not in guard.expected and guard.check(GUARDED, 99) == DELIVER
    guard.forget([OTHER])
    assert guard.check(OTHER, 3) == DELIVER


def test_partitions_are_independent() -> None:
    guard = OffsetGuard()
    guard.reset({GUARDED: 0, OTHER: 100})
    assert guard.check(GUARDED, 0) == DELIVER
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
    guard.reset({GUARDED: start})
    delivered: list[int] = []
    position = start
    queue = [o for o in stale if o < end]
    while position < end or queue:
        offset = queue.pop(0) if queue else position
        if not queue and offset == position:
            position += 1
        outcome = guard.check(GUARDED, offset)
        if outcome == DELIVER:
            delivered.append(offset)
        elif outcome == GAP:
            target = guard.resolve_gap(GUARDED, offset, earliest=0)
            assert target is not None
            queue = []  # the seek discards the rest of the stale batch
            position = target
    assert delivered == list(range(start, end))


def test_a_gap_on_a_partition_revoked_while_asking_the_broker_is_dropped() -> None:
    """getmany awaits the broker's earliest offset for a gap; a rebalance revoking the partition
    in that await used to raise KeyError and crash faust's fetcher (found by make chaos)."""
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

        def resume_flow(self) -> None:
            pass

    _offset_guard(FakeConsumer)
    consumer = FakeConsumer()

    async def drain() -> list[int]:
        consumer._offset_guard = OffsetGuard()  # type: ignore[attr-defined]
        consumer._offset_guard.reset({tp: 10})  # type: ignore[attr-defined]
        return [message.offset async for _, message in consumer.getmany(1.0)]

    assert asyncio.run(drain()) == [10]  # 15 and the rest of the batch are the new owner's
    assert consumer.seeks == []


def test_a_gap_fetched_first_twice_after_seeking_back_holds_no_records_and_is_accepted(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A transactional producer's commit marker takes an offset no record has: seeking back to it
    fetches the record after it first, every time. Without the rule the guard sought back forever
    (the partition wedged); one such fetch is not proof (a stale prefetched record), two are."""
    guard = OffsetGuard()
    guard.reset({GUARDED: 10})
    assert guard.check(GUARDED, 11) == GAP
    assert guard.resolve_gap(GUARDED, 11, earliest=0) == 10  # could be a stale record: seek back
    assert guard.check(GUARDED, 11) == GAP
    assert guard.resolve_gap(GUARDED, 11, earliest=0) == 10  # once after the seek: not yet proof
    assert guard.check(GUARDED, 11) == GAP
    with caplog.at_level(logging.WARNING):
        assert guard.resolve_gap(GUARDED, 11, earliest=0) is None
    assert "hold no records" in caplog.text
    assert guard.expected[GUARDED] == 12 and guard.gaps_accepted == 1


def test_a_different_record_first_after_the_seek_back_is_sought_back_again() -> None:
    guard = OffsetGuard()
    guard.reset({GUARDED: 10})
    for first in (30, 20, 15, 12):  # stale records: each time another one
        assert guard.check(GUARDED, first) == GAP
        assert guard.resolve_gap(GUARDED, first, earliest=0) == 10
    assert guard.check(GUARDED, 10) == DELIVER
    assert guard.check(GUARDED, 12) == GAP  # a delivery ends the seek back: one fetch is not proof
    assert guard.resolve_gap(GUARDED, 12, earliest=0) == 11


def test_a_held_partition_skips_every_record_until_reset() -> None:
    guard = OffsetGuard()
    guard.hold([GUARDED])
    assert [guard.check(GUARDED, o) for o in (0, 5, 99)] == [SKIP, SKIP, SKIP]
    assert guard.owns(GUARDED)
    guard.reset({GUARDED: 3})
    assert guard.check(GUARDED, 3) == DELIVER


class _DrainConsumer:
    """What ``faust.transport.consumer.Consumer._drain_messages`` (run unchanged) uses of a
    consumer, around a scripted fetch. ``perform_seek`` plays Faust's: the committed offsets go
    into ``_read_offset``."""

    app = SimpleNamespace(
        tables=SimpleNamespace(changelog_topics=set()),
        topics=SimpleNamespace(acks_enabled_for=lambda topic: True),
        should_stop=False,
    )
    consumer_stopped_errors: ClassVar[tuple[type[BaseException], ...]] = ()
    _commit_every = None
    should_stop = False

    def __init__(self, fetches: list[list[int]], committed: dict[Any, int | None], on_message: Any) -> None:
        self.fetches, self.committed_offsets, self.on_message = fetches, committed, on_message
        self._read_offset: Any = defaultdict(lambda: None)  # as Faust's Consumer.__init__
        self._stopped = asyncio.Event()
        self.suspend_flow = asyncio.Event()
        self.diag = SimpleNamespace(set_flag=lambda flag: None, unset_flag=lambda flag: None)
        self.transport = SimpleNamespace(app=self.app)
        self.log = logging.getLogger("drain")
        self.log.dev = lambda *args, **kwargs: None  # type: ignore[attr-defined]
        self.delivered: list[int] = []
        self.gaps: list[tuple[int, int]] = []
        self.seeks: list[int] = []

    async def getmany(self, timeout: float) -> Any:
        if not self.fetches:
            self._stopped.set()
            return
        for offset in self.fetches.pop(0):
            yield PARTITION, SimpleNamespace(offset=offset, topic=PARTITION.topic, key=None, value=None)

    async def callback(self, message: Any) -> None:
        self.delivered.append(message.offset)
        await self.on_message(self, message)

    async def perform_seek(self) -> None:
        self._read_offset.update(self.committed_offsets)

    async def seek(self, partition: Any, offset: int) -> None:
        self.seeks.append(offset)
        self._read_offset[partition] = offset

    def resume_flow(self) -> None:
        pass

    async def earliest_offsets(self, *tps: Any) -> dict[Any, int]:
        return {tp: 0 for tp in tps}

    def assignment(self) -> set[Any]:
        return {PARTITION}

    async def on_partitions_revoked(self, revoked: set[Any]) -> None:
        pass

    async def _add_gap(self, tp: Any, offset_from: int, offset_to: int) -> None:
        self.gaps.append((offset_from, offset_to))

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def wait_first(self, *coros: Any) -> None:
        delivery, suspended = coros
        suspended.close()
        await delivery


def test_a_delivery_finishing_after_the_rebalances_seek_does_not_drop_what_the_seek_fetches_again() -> None:
    """Recovery resumes the flow before it seeks the stream partitions to their committed offsets,
    so a record's delivery can finish after that seek; Faust's drain then records it as read and
    dropped the records the seek fetched again as "already read" (never handed out in this
    generation, the partition's commit stuck at the first of them). Without ``_ReadOffsets``:
    ``[140, 140, 141]`` -- 123..139 dropped."""
    from faust.transport.consumer import Consumer as FaustConsumer

    class Consumer(_DrainConsumer):
        pass

    _offset_guard(Consumer)

    async def seek_while_delivering(consumer: Any, message: Any) -> None:
        if consumer.delivered == [140]:
            await consumer.perform_seek()  # the rebalance lands while 140 is being delivered

    async def drain() -> list[int]:
        consumer = Consumer([[140], list(range(123, 142))], {PARTITION: 123}, seek_while_delivering)
        consumer._offset_guard = OffsetGuard()  # type: ignore[attr-defined]
        consumer._offset_guard.reset({PARTITION: 140})  # the previous generation's position
        await FaustConsumer._drain_messages(consumer, SimpleNamespace(_stopped=asyncio.Event()))  # type: ignore[arg-type]
        assert consumer.gaps == []
        return consumer.delivered

    assert asyncio.run(drain()) == [140, *range(123, 142)]


def test_the_rebalances_seek_resets_the_guard_before_anything_else_runs() -> None:
    """Without it (the guard reset after looking up the earliest offsets of the partitions with
    no commit): a record checked in that await against the previous generation's position passed,
    and Faust marked the offsets between the committed one and it as a gap (seen in each of 5
    instrumented runs of ``test_faust_rebalance.py``; the partition's commit then crept one offset
    per interval)."""
    fresh = TopicPartition("verdicts", 5)
    seen_in_the_await: list[tuple[dict[Any, int], set[Any]]] = []

    class Consumer(_DrainConsumer):
        def assignment(self) -> set[Any]:
            return {PARTITION, fresh}

        async def earliest_offsets(self, *tps: Any) -> dict[Any, int]:
            guard = self._offset_guard  # type: ignore[attr-defined]
            seen_in_the_await.append((dict(guard.expected), set(guard.held)))
            await asyncio.sleep(0)
            return {tp: 7 for tp in tps}

    _offset_guard(Consumer)

    async def seek() -> OffsetGuard:
        consumer = Consumer([], {PARTITION: 123, fresh: None}, None)
        guard = consumer._offset_guard = OffsetGuard()  # type: ignore[attr-defined]
        guard.reset({PARTITION: 140, fresh: 60})  # the previous generation's positions
        await consumer.perform_seek()
        return guard

    guard = asyncio.run(seek())
    assert seen_in_the_await == [({PARTITION: 123}, {fresh})]
    assert guard.expected == {PARTITION: 123, fresh: 7} and not guard.held


def test_records_handed_out_before_the_final_resume_are_fetched_again() -> None:
    """Recovery resumes the flow, seeks, then calls ``app.flow_control.resume()``, which empties
    every channel queue, and ``resume_flow()``: records handed out between the seek and that
    resume are dropped unread. Seen (test_faust_rebalance.py, 8 runs of 38): offsets
    121..123 of a partition handed to Faust's conductor and never to the agent, its commit stuck
    at 121. Without re-expecting the seek's positions: ``[12, 13]`` delivered, 10 and 11 lost."""

    class Consumer(_DrainConsumer):
        pass

    _offset_guard(Consumer)

    async def run() -> tuple[list[int], list[int], list[int]]:
        consumer = Consumer([], {PARTITION: 10}, None)
        consumer._offset_guard = OffsetGuard()  # type: ignore[attr-defined]
        await consumer.perform_seek()
        consumer.fetches = [[10, 11]]
        dropped = [message.offset async for _, message in consumer.getmany(1.0)]
        consumer.resume_flow()  # right after flow_control.resume() emptied the queues
        consumer.fetches = [[12, 13], [10, 11, 12]]
        after = [message.offset async for _, message in consumer.getmany(1.0)]
        after += [message.offset async for _, message in consumer.getmany(1.0)]
        await refetched(consumer)  # seeks to what is owed by then: 13
        return dropped, after, consumer.seeks

    assert asyncio.run(run()) == ([10, 11], [10, 11, 12], [10, 13])


async def refetched(consumer: Any) -> None:
    """Wait for the guard's refetch tasks (seeks back it does not await where Faust seeks)."""
    await asyncio.gather(*consumer.__dict__.get("_offset_guard_refetches", ()))


class _FetchesFromItsSeeks(_DrainConsumer):
    """A fetcher that, once sought to an offset, fetches from it up to ``END`` (and nothing
    otherwise): records dropped unread come again only if something seeks back to them."""

    END = 3

    async def seek(self, partition: Any, offset: int) -> None:
        await super().seek(partition, offset)
        self.fetches = [list(range(offset, self.END))]


def test_at_the_final_resume_what_was_dropped_is_fetched_again_without_a_later_record() -> None:
    """The records handed out between the seek and the final resume are dropped unread (above);
    when no later record comes to show the gap -- every verdict already on the topic, none after
    -- the partition stayed idle for good (``test_two_explainers_share_the_work`` failed in CI:
    one explainer did nothing after the start-up rebalance, 992 of 1,500 explanations pending).
    Without the refetch: nothing after the resume."""

    class Consumer(_FetchesFromItsSeeks):
        END = 12

    _offset_guard(Consumer)

    async def run() -> tuple[list[int], list[int], list[int]]:
        consumer = Consumer([], {PARTITION: 10}, None)
        consumer._offset_guard = OffsetGuard()  # type: ignore[attr-defined]
        await consumer.perform_seek()
        consumer.fetches = [[10, 11]]
        dropped = [message.offset async for _, message in consumer.getmany(1.0)]
        consumer.resume_flow()  # right after flow_control.resume() emptied the queues
        await refetched(consumer)
        after = [message.offset async for _, message in consumer.getmany(1.0)]
        return dropped, after, consumer.seeks

    assert asyncio.run(run()) == ([10, 11], [10, 11], [10])


def test_what_a_partition_without_a_commit_skipped_while_held_is_fetched_again() -> None:
    """A partition with no commit is held (its records skipped) while the seek asks the broker
    for its earliest offset, and the flow runs meanwhile: what the fetcher got then is fetched
    again once the position is known, not when a later record shows the gap (there may be
    none). Without the refetch: ``[]`` after the seek, offsets 0..2 never handed out."""

    class Consumer(_FetchesFromItsSeeks):
        skipped: list[int] | None = None

        async def earliest_offsets(self, *tps: Any) -> dict[Any, int]:
            if self.skipped is None:  # the flow runs during the lookup
                self.fetches = [[0, 1, 2]]
                self.skipped = [message.offset async for _, message in self.getmany(1.0)]
            return {tp: 0 for tp in tps}

    _offset_guard(Consumer)

    async def run() -> tuple[list[int] | None, list[int]]:
        consumer = Consumer([], {PARTITION: None}, None)
        consumer._offset_guard = OffsetGuard()  # type: ignore[attr-defined]
        await consumer.perform_seek()
        await refetched(consumer)
        return consumer.skipped, [message.offset async for _, message in consumer.getmany(1.0)]

    assert asyncio.run(run()) == ([], [0, 1, 2])


class _Generations(_DrainConsumer):
    """A consumer whose app has a consumer generation, as Faust's (set on each assignment)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.app = SimpleNamespace(**vars(_DrainConsumer.app), consumer_generation_id=1)


def test_a_seek_faust_started_from_getmany_that_finishes_after_recoverys_is_dropped() -> None:
    """Faust also seeks from ``getmany`` while the flow is stopped, and Recovery does not await
    that seek: it can finish after Recovery's own seek and final resume. Seen (a clean-clone run of
    ``test_faust_rebalance.py``, the refetch of 181e6ef): its positions were applied late, and at
    the next rebalance every probe partition was sought back to the generation before's offsets
    (owed 123, fetched 131). Without the ticket: the guard owes 10 again after 10..14 were
    handed on."""

    class Consumer(_Generations):
        slow: asyncio.Future[None] | None = None

        async def perform_seek(self) -> None:  # Faust's, the first one slow to hear from the broker
            if self.slow is None:
                self.slow = asyncio.get_running_loop().create_future()
                await self.slow
            await super().perform_seek()

    _offset_guard(Consumer)

    async def run() -> tuple[dict[Any, int], dict[Any, int], dict[Any, int]]:
        consumer = Consumer([], {PARTITION: 10}, None)
        guard = consumer._offset_guard = OffsetGuard()  # type: ignore[attr-defined]
        late = asyncio.ensure_future(consumer.perform_seek())  # from getmany, flow stopped
        while consumer.slow is None:
            await asyncio.sleep(0)
        await consumer.perform_seek()  # Recovery's
        consumer.resume_flow()  # the final resume
        await refetched(consumer)
        consumer.fetches = [[10, 11, 12, 13, 14]]
        assert [message.offset async for _, message in consumer.getmany(1.0)] == [10, 11, 12, 13, 14]
        after_recovery = dict(guard.expected)
        consumer.slow.set_result(None)
        await late
        after_the_late_seek = dict(guard.expected)
        consumer.app.consumer_generation_id = 2
        consumer.resume_flow()  # the next rebalance's first resume, before its seek
        return after_recovery, after_the_late_seek, dict(guard.expected)

    owed = {PARTITION: 15}
    assert asyncio.run(run()) == (owed, owed, owed)


def test_a_seek_of_an_earlier_generation_is_not_applied_at_the_resume() -> None:
    """The positions a seek stored are applied at the next resume only in its own generation: a
    rebalance in between sought every partition anew. Without the check: the guard owes 10 again
    after the next generation handed on 10..14."""

    class Consumer(_Generations):
        pass

    _offset_guard(Consumer)

    async def run() -> dict[Any, int]:
        consumer = Consumer([], {PARTITION: 10}, None)
        guard = consumer._offset_guard = OffsetGuard()  # type: ignore[attr-defined]
        await consumer.perform_seek()
        consumer.app.consumer_generation_id = 2  # a rebalance (no revocation: same partitions)
        consumer.fetches = [[10, 11, 12, 13, 14]]
        assert [message.offset async for _, message in consumer.getmany(1.0)] == [10, 11, 12, 13, 14]
        consumer.resume_flow()
        return dict(guard.expected)

    assert asyncio.run(run()) == {PARTITION: 15}


def test_a_seek_cancelled_while_asking_for_the_earliest_offset_leaves_nothing_held() -> None:
    """Recovery bounds its seek (``broker_request_timeout``) and cancels it: a partition left held
    would skip every record until the next rebalance. Released, it takes the next record."""

    class Consumer(_DrainConsumer):
        asking = asyncio.Event()

        async def earliest_offsets(self, *tps: Any) -> dict[Any, int]:
            self.asking.set()
            await asyncio.get_running_loop().create_future()  # no answer
            raise AssertionError("unreachable")

    _offset_guard(Consumer)

    async def run() -> list[int]:
        consumer = Consumer([], {PARTITION: None}, None)
        consumer._offset_guard = OffsetGuard()  # type: ignore[attr-defined]
        seek = asyncio.ensure_future(consumer.perform_seek())
        await consumer.asking.wait()  # the seek is asking the broker: Recovery's timeout fires
        seek.cancel()
        with pytest.raises(asyncio.CancelledError):
            await seek
        consumer.fetches = [[4, 5]]
        return [message.offset async for _, message in consumer.getmany(1.0)]

    assert asyncio.run(run()) == [4, 5]


def test_the_final_resume_expects_the_seeks_positions_not_what_was_handed_out_meanwhile() -> None:
    """Records are handed out while the seek looks up the earliest offset of a partition with no
    commit; they land in the queues the final resume empties. Seen when the guard kept what it
    expected by the end of the seek: every partition's commit stuck (``[10, 11]`` -> 12)."""
    fresh = TopicPartition("verdicts", 5)

    class Consumer(_DrainConsumer):
        def assignment(self) -> set[Any]:
            return {PARTITION, fresh}

        async def earliest_offsets(self, *tps: Any) -> dict[Any, int]:
            if fresh in tps:  # the seek's lookup: records of the other partition go out meanwhile
                self.fetches = [[10, 11]]
                self.handed = [message.offset async for _, message in self.getmany(1.0)]
            return {tp: 0 for tp in tps}

    _offset_guard(Consumer)

    async def run() -> tuple[list[int], int]:
        consumer = Consumer([], {PARTITION: 10, fresh: None}, None)
        guard = consumer._offset_guard = OffsetGuard()  # type: ignore[attr-defined]
        await consumer.perform_seek()
        consumer.resume_flow()
        return consumer.handed, guard.expected[PARTITION]  # type: ignore[attr-defined]

    assert asyncio.run(run()) == ([10, 11], 10)


def test_the_guard_seeks_back_in_the_consumer_thread() -> None:
    """aiokafka is not thread-safe and runs in Faust's consumer thread; ``Consumer.seek`` calls it
    from the event loop's thread, ``seek_wait`` in its own (as Faust's own seeks do)."""
    waited: list[dict[Any, int]] = []

    class Consumer(_DrainConsumer):
        async def seek_wait(self, partitions: dict[Any, int]) -> None:
            waited.append(dict(partitions))

    _offset_guard(Consumer)

    async def run() -> list[int]:
        consumer = Consumer([[17]], {}, None)
        consumer._offset_guard = OffsetGuard()  # type: ignore[attr-defined]
        consumer._offset_guard.reset({PARTITION: 10})
        return [message.offset async for _, message in consumer.getmany(1.0)]

    assert asyncio.run(run()) == []
    assert waited == [{PARTITION: 10}]


def test_an_accepted_gap_is_marked_for_fausts_commit() -> None:
    """The drain's gap marking is off for guarded partitions: the guard marks the gap it accepts,
    or Faust's commit would wait at its first offset for acks that never come."""

    class Consumer(_DrainConsumer):
        async def earliest_offsets(self, *tps: Any) -> dict[Any, int]:
            return {tp: 50 for tp in tps}  # retention removed 10..49

    _offset_guard(Consumer)

    async def drain() -> Consumer:
        consumer = Consumer([[50, 51]], {}, lambda consumer, message: asyncio.sleep(0))
        consumer._offset_guard = OffsetGuard()  # type: ignore[attr-defined]
        consumer._offset_guard.reset({PARTITION: 10})
        return [message.offset async for _, message in consumer.getmany(1.0)], consumer.gaps

    assert asyncio.run(drain()) == ([50, 51], [(10, 49)])


# -- the fetch long-poll bound ------------------------------------------------------------------


def test_the_worker_consumer_waits_at_most_the_configured_fetch_wait() -> None:
    """Without the patch: ``assert 1500 == 123`` (Faust's hard-coded bound)."""
    import faust

    install_faust_patches(Settings(fetch_max_wait_ms=123))
    app = faust.App("fetch-wait", broker="kafka://127.0.0.1:1", store="memory://", autodiscover=False)

    async def worker_consumer() -> Any:
        thread = app.consumer._thread  # type: ignore[attr-defined]
        consumer = thread._create_worker_consumer(app.transport)
        try:
            return consumer._fetch_max_wait_ms  # what start() hands aiokafka's Fetcher
        finally:
            await consumer.stop()

    assert asyncio.run(worker_consumer()) == 123


# -- the commit-livelock detector ---------------------------------------------------------------


@pytest.fixture
def subscription() -> Iterator[SubscriptionState]:
    async def assigned() -> SubscriptionState:  # aiokafka builds these on a running loop
        state = SubscriptionState()
        state.assign_from_user({PARTITION})
        return state

    loop = asyncio.new_event_loop()
    yield loop.run_until_complete(assigned())
    loop.close()


def _partition(subscription: SubscriptionState) -> TopicPartitionState:
    state = subscription.subscription.assignment.state_value(PARTITION)  # type: ignore[union-attr]
    state.highwater = 300  # fetched before: aiokafka knows the end, so the detector goes on
    return state


def _thread(subscription: SubscriptionState, checked: list[Any]) -> Any:
    """An ``AIOKafkaConsumerThread`` whose aiokafka event path is healthy (recent fetches), so
    Faust's detector goes on to read the partition's position; its stream is recent too."""

    def verify_aiokafka(now: float, tp: Any) -> bool:
        checked.append(tp)
        return False  # no error logged: the detector goes on

    consumer = SimpleNamespace(_fetcher=SimpleNamespace(_subscriptions=subscription))
    app = SimpleNamespace(
        monitor=SimpleNamespace(stream_inbound_time={}),
        topics=SimpleNamespace(acks_enabled_for=lambda topic: True),
    )
    return SimpleNamespace(
        _consumer=consumer, _ensure_consumer=lambda: consumer, _verify_aiokafka_event_path=verify_aiokafka,
        consumer=SimpleNamespace(app=app), time_started=time.monotonic(), tp_stream_timeout_secs=300.0,
    )  # fmt: skip


def test_a_partition_being_reset_does_not_crash_the_livelock_detector(
    subscription: SubscriptionState,
) -> None:
    """Without the patch: AssertionError from aiokafka's ``assert self._position is not None``
    inside Faust's ``verify_event_path`` (what stopped an explainer in ``make chaos``)."""
    install_faust_patches(Settings())
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    checked: list[Any] = []
    thread = _thread(subscription, checked)
    partition = _partition(subscription)
    partition.await_reset(-2)  # what the fetcher does on OFFSET_OUT_OF_RANGE: the position is unset
    AIOKafkaConsumerThread.verify_event_path(thread, time.monotonic(), TP(PARTITION.topic, 4))
    assert checked == []  # skipped until aiokafka has a position again


def test_a_partition_with_its_position_again_is_checked(subscription: SubscriptionState) -> None:
    install_faust_patches(Settings())
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    checked: list[Any] = []
    thread = _thread(subscription, checked)
    partition = _partition(subscription)
    partition.await_reset(-2)
    partition.reset_to(206)
    tp = TP(PARTITION.topic, 4)
    AIOKafkaConsumerThread.verify_event_path(thread, time.monotonic(), tp)
    assert checked == [tp]


def test_no_consumer_yet_is_skipped(subscription: SubscriptionState) -> None:
    """Without the patch: AttributeError ('NoneType' object has no attribute '_fetcher')."""
    install_faust_patches(Settings())
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    thread = _thread(subscription, [])
    thread._consumer = None
    thread._ensure_consumer = lambda: thread._consumer
    assert AIOKafkaConsumerThread.verify_event_path(thread, time.monotonic(), TP(PARTITION.topic, 4)) is None


# -- topic declarations while the broker is away ------------------------------------------------


class FakeTransport:
    """Faust's ``Transport`` as far as ``_create_topic`` goes: it fails as told, then succeeds."""

    failures: ClassVar[list[BaseException]] = []
    calls: ClassVar[int] = 0

    async def _create_topic(self, *args: Any, **kwargs: Any) -> None:
        type(self).calls += 1
        if self.failures:
            raise self.failures.pop(0)


@pytest.fixture
def transport(monkeypatch: pytest.MonkeyPatch) -> type[FakeTransport]:
    monkeypatch.setattr(faust_patches, "backoff", lambda attempt: 0.0)  # no pauses between attempts

    class Transport(FakeTransport):
        failures: ClassVar[list[BaseException]] = []
        calls: ClassVar[int] = 0

    faust_patches._retry_topic_declarations(Transport)
    return Transport


def test_a_declaration_waits_for_a_broker_that_is_away(transport: type[FakeTransport]) -> None:
    """Without the patch: NodeNotReadyError raised (the worker exits)."""
    transport.failures = [NodeNotReadyError("node 0"), TimeoutError()]
    asyncio.run(transport()._create_topic("verdicts", 6, 1))
    assert transport.calls == 3


def test_a_refused_declaration_is_raised_at_once(transport: type[FakeTransport]) -> None:
    transport.failures = [TopicAuthorizationFailedError("verdicts")]
    with pytest.raises(TopicAuthorizationFailedError):
        asyncio.run(transport()._create_topic("verdicts", 6, 1))
    assert transport.calls == 1


def test_a_broker_away_past_the_ride_through_bound_stops_the_worker(
    transport: type[FakeTransport], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(faust_patches, "RIDE_THROUGH_S", 0.0)
    transport.failures = [NodeNotReadyError("node 0")]
    with pytest.raises(BrokerUnreachable):
        asyncio.run(transport()._create_topic("verdicts", 6, 1))


# -- installation -------------------------------------------------------------------------------


def test_installing_twice_patches_once_and_keeps_the_latest_settings() -> None:
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread, Transport

    install_faust_patches(Settings())
    patched = (AIOKafkaConsumerThread._create_worker_consumer, AIOKafkaConsumerThread.verify_event_path,
               Transport._create_topic)  # fmt: skip
    install_faust_patches(Settings(fetch_max_wait_ms=77))
    assert patched == (AIOKafkaConsumerThread._create_worker_consumer,
                       AIOKafkaConsumerThread.verify_event_path, Transport._create_topic)  # fmt: skip
    assert faust_patches._installed[0].fetch_max_wait_ms == 77


class _Message:
    def __init__(self, partition: int) -> None:
        self.topic, self.partition, self.offset = "verdicts", partition, 1


class _Event:  # weak-referenceable, as Faust's events are
    def __init__(self, partition: int) -> None:
        self.message = _Message(partition)


def test_focus_makes_a_table_write_land_in_its_events_partition_store(tmp_path: Path) -> None:
    """Faust picks a table's store from the task's current event; the compute task writes rows
    of many partitions with none of its own, so ``focus`` makes each row's event current."""
    import asyncio

    from app.explainer.explanation_tables import ExplanationTables
    from app.explainer.faust_app import create_app
    from app.explainer.faust_patches import focus
    from app.settings import ExplainerSettings

    settings = ExplainerSettings(data_dir=tmp_path, role="explainer")
    app = create_app(settings)
    table = ExplanationTables(app, settings).waiting

    async def writes() -> list[bytes | None]:
        with pytest.raises(AssertionError):  # no current event: Faust cannot choose a store
            table.data[b"k"] = b"nowhere"
        two, four = _Event(2), _Event(4)
        focus(None, two)  # type: ignore[arg-type]
        table.data[b"k"] = b"two"
        focus(None, four)  # type: ignore[arg-type]
        table.data[b"k"] = b"four"
        read = []
        for event in (two, four):
            focus(None, event)  # type: ignore[arg-type]
            read.append(table.data.get(b"k"))
        return read

    assert asyncio.run(writes()) == [b"two", b"four"]
    stores = sorted(p.name for p in Path(app.conf.tabledir).glob("explanation_waiting-*.db"))
    assert stores == ["explanation_waiting-2.db", "explanation_waiting-4.db"]
