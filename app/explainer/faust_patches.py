"""What the explainer changes in faust-streaming 0.15.3, each change with its reason and its test.

Every patch here reaches into private attributes of faust-streaming 0.15.3 and aiokafka 0.14
(the versions ``pyproject.toml`` pins): a version bump must run ``tests/unit/test_faust_patches.py``
and ``tests/integration/test_faust_rebalance.py`` first, and drop a patch whose upstream fix it
brings (its tests then pass without it).

- ``_offset_guard``: every record of a stream partition reaches the agent, in offset order,
  none skipped, after a rebalance too (faust-streaming#216/#221).
- ``_fetch_wait_from_settings``: the worker consumer's fetch long-poll bound is a setting.
- ``_livelock_detector_skips_partitions_without_position``: Faust's commit-livelock detector
  must not crash a worker while aiokafka resets an offset.
- ``_retry_topic_declarations``: a broker away while the worker declares its topics is waited
  for, not a crash (robinhood/faust#400, #113).

Two helpers use private Stream API too, without patching anything:

- ``micro_batches``: Faust's ``take_events`` with the window opened by the first event (an
  idle stream costs nothing) and acks left to the caller (the router acks a verdict only once
  its explanation is final); ``Stream._enable_passive`` and ``Stream._processors``. No upstream
  issue: ``take_events`` works as designed, for another use. Tests: the router's integration
  tests (``tests/integration/test_explainer.py``) and ``test_faust_rebalance.py``'s probe agent.
- ``focus``: makes an event current for a task (``faust.streams._current_event``), so a table
  write from the compute task lands in the store of the row's own partition; there is no
  public setter. Without it a write from a task with no current event fails Faust's
  ``assert event is not None`` (``tests/unit/test_faust_patches.py``).

Removed (issue 19): the producer-buffer bound (``ProducerBuffer.max_messages``, Faust's 100
pending messages, raised for the scorer's batches when the scorer ran on Faust). The explainer
writes every record through librdkafka (``app/kafka/sink.py``) and puts nothing on Faust's
producer buffer: ``test_the_explainer_queues_nothing_on_fausts_producer_buffer``.
"""

from __future__ import annotations

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any

from faust import streams as faust_streams
from faust.types import EventT, StreamT
from mode.utils.futures import notify

from app.kafka.outage import RIDE_THROUGH_S, BrokerUnreachable, Outage, backoff
from app.settings import ExplainerSettings

log = logging.getLogger(__name__)

_installed: list[ExplainerSettings] = []


def install_faust_patches(settings: ExplainerSettings) -> None:
    """Idempotent: patches Faust's classes once; the fetch bound follows the latest settings."""
    if _installed:
        _installed[0] = settings
        return
    _installed.append(settings)
    from faust.transport.consumer import Consumer
    from faust.transport.drivers import aiokafka as driver

    _offset_guard(Consumer)
    _fetch_wait_from_settings(driver.AIOKafkaConsumerThread)
    _livelock_detector_skips_partitions_without_position(driver.AIOKafkaConsumerThread)
    _retry_topic_declarations(driver.Transport)


def _fetch_wait_from_settings(thread_class: Any) -> None:
    """``FRAUDLENS_FETCH_MAX_WAIT_MS`` (500) instead of the ``fetch_max_wait_ms=1500`` that
    ``AIOKafkaConsumerThread._create_worker_consumer`` hard-codes.

    Upstream: no issue or setting (faust-streaming master still hard-codes 1,500). Not a broker
    quirk: on any broker aiokafka keeps one fetch in flight per node, so a partition sought back
    (every rebalance's ``perform_seek``) or drained while a parked fetch of idle partitions waits
    is read again only when that fetch returns, i.e. after up to max_wait; the embedded broker's
    fetch coalescing is cut at this bound too (docs/cost.md, lever 1). The scorer's and relay's
    librdkafka consumers use the same setting (``fetch.wait.max.ms``).
    Test: ``test_the_worker_consumer_waits_at_most_the_configured_fetch_wait``.
    """
    original = thread_class._create_worker_consumer

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = _installed[0].fetch_max_wait_ms  # read by start()'s Fetcher
        return consumer

    thread_class._create_worker_consumer = create_worker_consumer


def _livelock_detector_skips_partitions_without_position(thread_class: Any) -> None:
    """Faust's commit-livelock detector (``Consumer._commit_livelock_detector``, every
    2.5 × commit interval) runs ``AIOKafkaConsumerThread.verify_event_path`` for each assigned
    partition, which reads ``tp_state.position``; aiokafka asserts that the position is set, and
    it is unset while aiokafka resets an offset after OFFSET_OUT_OF_RANGE. The AssertionError
    crashed the consumer and stopped the explainer (found by ``make chaos``, explainer_rebalance).
    The check is skipped for such a partition until it has a position again.

    Upstream: no issue found; faust-streaming master reads the position the same way.
    Not only the embedded broker: OFFSET_OUT_OF_RANGE is what any broker answers a consumer whose
    position retention (time or size) or DeleteRecords removed, e.g. an explainer lagging
    behind a topic's ``retention.ms`` on Apache Kafka; the embedded broker (60 s retention cap,
    trims consumed records) only makes it frequent. The reset lasts one ListOffsets round trip,
    or the whole outage when the broker is away.
    Tests: ``test_a_partition_being_reset_does_not_crash_the_livelock_detector``,
    ``test_a_partition_with_its_position_again_is_checked``, ``test_no_consumer_yet_is_skipped``.
    """
    original = thread_class.verify_event_path

    def verify_event_path(self: Any, now: float, tp: Any) -> None:
        if not has_position(self, tp):
            return None
        return original(self, now, tp)

    thread_class.verify_event_path = verify_event_path


def has_position(thread: Any, tp: Any) -> bool:
    """Whether aiokafka knows a fetch position for ``tp`` (False while it resets the offset)."""
    from aiokafka.structs import TopicPartition

    consumer = thread._consumer
    if consumer is None:
        return False
    assignment = consumer._fetcher._subscriptions.subscription
    if assignment is None or assignment.assignment is None:
        return False
    state = assignment.assignment.state_value(TopicPartition(tp.topic, tp.partition))
    return state is not None and bool(state.has_valid_position)


def _retry_topic_declarations(transport_class: Any) -> None:
    """Faust declares every topic and changelog while its worker starts
    (``Transport._create_topic``); one request to a broker that is away (restarting) raises
    aiokafka's NodeNotReadyError or a timeout and the whole worker exits (issue 23). The
    declaration is retried with backoff while the broker does not answer (one log line each
    way), up to ``app.outage.RIDE_THROUGH_S``; any other error is raised at once.

    Upstream: robinhood/faust#400 (worker crashes when it fails to create a topic; expected: it
    retries) and #113 (NodeNotReadyError not recovered), never fixed in faust-streaming.
    Not a broker quirk: any broker restarts.
    Tests: ``test_a_declaration_waits_for_a_broker_that_is_away``,
    ``test_a_refused_declaration_is_raised_at_once``,
    ``test_a_broker_away_past_the_ride_through_bound_stops_the_worker``.
    """
    original = transport_class._create_topic
    outage = Outage("explainer: declaring topics", log)

    async def create_topic(self: Any, *args: Any, **kwargs: Any) -> None:
        attempt = 0
        while True:
            try:
                await original(self, *args, **kwargs)
            except Exception as exc:
                if not broker_unreachable(exc):
                    raise
                outage.down(repr(exc))
                if outage.seconds() >= RIDE_THROUGH_S:
                    raise BrokerUnreachable(f"no answer from the broker for {RIDE_THROUGH_S:.0f} s") from exc
                await asyncio.sleep(backoff(attempt))
                attempt += 1
                continue
            outage.up()
            return

    transport_class._create_topic = create_topic


def broker_unreachable(exc: BaseException) -> bool:
    """Whether an aiokafka error means the broker is away (worth waiting for), not a refusal."""
    from aiokafka import errors
    from faust.exceptions import NotReady

    away = (errors.NodeNotReadyError, errors.KafkaConnectionError, errors.RequestTimedOutError,
            errors.KafkaTimeoutError, asyncio.TimeoutError, NotReady)  # fmt: skip
    return isinstance(exc, away)


# -- the offset guard ---------------------------------------------------------------------------

DELIVER, SKIP, GAP = "deliver", "skip", "gap"


class OffsetGuard:
    """Per-partition bookkeeping of the next offset a stream is owed (pure; no I/O)."""

    def __init__(self) -> None:
        self.expected: dict[Any, int] = {}
        self.gaps_refetched = 0
        self.gaps_accepted = 0

    def reset(self, offsets: Mapping[Any, int | None]) -> None:
        """The consumer now reads ``tp`` from ``offset`` (None or negative: unknown, take the next)."""
        for tp, offset in offsets.items():
            if offset is None or offset < 0:
                self.expected.pop(tp, None)
            else:
                self.expected[tp] = offset

    def forget(self, tps: Iterable[Any]) -> None:
        for tp in tps:
            self.expected.pop(tp, None)

    def owns(self, tp: Any) -> bool:
        """Whether ``tp`` is still tracked (a revocation forgets it)."""
        return tp in self.expected

    def check(self, tp: Any, offset: int) -> str:
        """DELIVER (and expect the next offset), SKIP a stale duplicate, or report a GAP."""
        want = self.expected.get(tp)
        if want is None or offset == want:
            self.expected[tp] = offset + 1
            return DELIVER
        return SKIP if offset < want else GAP

    def resolve_gap(self, tp: Any, offset: int, earliest: int) -> int | None:
        """For a gap at ``offset``: the offset to seek back to, or None to deliver it.

        ``earliest`` is the broker's first retained offset: below it nothing can be fetched.
        """
        floor = max(self.expected[tp], earliest)
        if offset <= floor:
            log.warning(
                "%s: offsets %d..%d were removed by retention before this worker read them",
                tp, self.expected[tp], offset - 1,
            )  # fmt: skip
            self.gaps_accepted += 1
            self.expected[tp] = offset + 1
            return None
        log.warning("%s: fetched offset %d but the stream is owed %d: seeking back", tp, offset, floor)
        self.gaps_refetched += 1
        self.expected[tp] = floor
        return floor


def _offset_guard(consumer_class: Any) -> None:
    """Every record of a stream partition reaches the agent, in offset order, none skipped.

    Upstream: faust-streaming#216 (streams resumed before the seek to the committed offsets) and
    #221 (a record prefetched before a rebalance reaches the stream after it, past the committed
    offset). Their fixes, #217 and #223, are both in 0.15.3, and the failure is still there.
    #217 put the seek before the flow only in ``Recovery._resume_streams`` (apps without tables);
    the explainer has tables, and when none needs recovering ``Recovery._restart_recovery`` still
    resumes the flow ("Resuming flow...") before ``on_recovery_completed`` resumes the stream
    partitions and awaits their seek (that order is in every rebalance of the worker's log; that
    it is the whole cause is not established). Seen without this guard: right after a rebalance
    the agent is handed, within one consumer generation, a record past the next one its
    partition owes it (``probe[4]`` 149 -> 635, ``probe[5]`` 210 -> 224, ``probe[3]`` 823 -> 839),
    and ``Consumer._drain_messages`` drops the re-fetched records in between as already read
    (with DEVLOG=1: "DROPPED MESSAGE ROFF 211" ...). Those the previous generation left
    unfinished are never handed out again: the partition's commit stalls at the first of them
    until the next rebalance (seen), or, with ``Consumer._new_offset``'s off-by-one
    (``app/agents/acks.py``), passes it. Measured when the scorer ran on Faust: a SIGKILL
    takeover under 100 tx/s lost ~20 transactions.
    Test: ``tests/integration/test_faust_rebalance.py::
    test_every_record_reaches_the_agent_in_order_through_a_join_and_a_sigkill_takeover``; without
    the guard it failed 4 runs of 4 (the jumps above; in one, 12 records never finished).

    How: ``Consumer.getmany`` (where records leave the fetcher) keeps, per partition of a stream
    topic, the next offset the stream must see. A record below it is a stale duplicate and is
    skipped; a record above it is a gap: if the broker still holds the missing offsets the
    partition is sought back to them (the rest of the stale batch is skipped); if retention
    removed them the gap is real, logged, and accepted. ``perform_seek``/``seek`` reset the
    expectation (to the committed offset or, with none, the earliest retained one); a revoked
    partition is forgotten. Changelog topics are left alone: compaction makes gaps there normal,
    and table recovery reads them its own way.

    The "retention removed it" branch is not only for the embedded broker, which trims consumed
    records and caps retention at 60 s: Apache Kafka's ``retention.ms``/``retention.bytes`` and
    DeleteRecords remove records a lagging explainer has not read as well, and a guard that
    sought back to them would loop on OFFSET_OUT_OF_RANGE. Unit tests: ``test_faust_patches.py``
    (``test_record_beyond_the_expected_offset_is_a_gap_and_is_sought_back`` and the others there).
    """
    if getattr(consumer_class, "_fraudlens_offset_guard", False):
        return
    consumer_class._fraudlens_offset_guard = True
    original_getmany = consumer_class.getmany
    original_perform_seek = consumer_class.perform_seek
    original_seek = consumer_class.seek
    original_revoked = consumer_class.on_partitions_revoked

    def guard_of(consumer: Any) -> OffsetGuard:
        guard = consumer.__dict__.get("_offset_guard")
        if guard is None:
            guard = consumer.__dict__["_offset_guard"] = OffsetGuard()
        return guard

    def guarded(consumer: Any, topic: str) -> bool:
        app = consumer.app
        return topic not in app.tables.changelog_topics and app.topics.acks_enabled_for(topic)

    async def getmany(self: Any, timeout: float) -> AsyncIterator[tuple[Any, Any]]:
        guard = guard_of(self)
        sought: set[Any] = set()
        async for tp, message in original_getmany(self, timeout):
            if not guarded(self, tp.topic):
                yield tp, message
                continue
            if tp in sought:
                continue  # the rest of a stale batch: the seek fetches these again
            outcome = guard.check(tp, message.offset)
            if outcome == DELIVER:
                yield tp, message
            elif outcome == GAP:
                earliest = (await self.earliest_offsets(tp)).get(tp, 0)
                if not guard.owns(tp):
                    # Revoked while the broker was asked (a rebalance ran meanwhile): the record
                    # is the new owner's. Found by make chaos (explainer_rebalance): the KeyError
                    # here crashed the fetcher and stopped the worker.
                    sought.add(tp)
                    continue
                target = guard.resolve_gap(tp, message.offset, earliest)
                if target is None:
                    yield tp, message
                else:
                    sought.add(tp)
                    await original_seek(self, tp, target)

    async def perform_seek(self: Any) -> None:
        await original_perform_seek(self)
        # perform_seek left the committed offset of every assigned partition in _read_offset; a
        # partition with none is read from its earliest retained offset (auto_offset_reset).
        positions = {tp: self._read_offset.get(tp) for tp in self.assignment() if guarded(self, tp.topic)}
        unknown = [tp for tp, offset in positions.items() if offset is None]
        if unknown:
            positions.update(await self.earliest_offsets(*unknown))
        if positions:
            log.info(
                "streams resume at %s",
                ", ".join(f"{tp.topic}[{tp.partition}]@{o}" for tp, o in sorted(positions.items())),
            )
        guard_of(self).reset(positions)

    async def seek(self: Any, partition: Any, offset: int) -> None:
        await original_seek(self, partition, offset)
        guard_of(self).reset({partition: offset})

    async def on_partitions_revoked(self: Any, revoked: set[Any]) -> None:
        guard_of(self).forget(revoked)
        await original_revoked(self, revoked)

    consumer_class.getmany = getmany
    consumer_class.perform_seek = perform_seek
    consumer_class.seek = seek
    consumer_class.on_partitions_revoked = on_partitions_revoked


# -- private Stream API, no patch --------------------------------------------------------------


async def micro_batches(
    stream: StreamT, max_: int, within: float, ack: bool = True
) -> AsyncIterator[Sequence[EventT]]:
    """Yield up to ``max_`` events, at most ``within`` seconds after the first one arrived.

    With ``ack=False`` the caller acks each event (``stream.ack``) once its effects are durable;
    an event never acked is never committed, so a restarted worker sees it again.
    """
    s: Any = stream  # the private stream API take_events itself uses
    events: list[EventT] = []
    first_arrived, buffer_full, consumed = asyncio.Event(), asyncio.Event(), asyncio.Event()
    consuming: asyncio.Future[None] | None = None
    enable_acks = s.enable_acks

    async def add_to_buffer(value: Any) -> Any:
        nonlocal consuming
        if consuming is not None:
            try:
                await consuming
            finally:
                consuming = None
        event = s.current_event
        if event is None:
            raise RuntimeError("micro_batches found current_event is None")
        events.append(event)
        first_arrived.set()
        if len(events) >= max_:
            buffer_full.set()
            consumed.clear()
            await s.wait(consumed)
        return value

    s.enable_acks = False
    s.add_processor(add_to_buffer)
    s._enable_passive(aiter(s.channel))
    try:
        while not s.should_stop:
            await s.wait_for_stopped(first_arrived)
            await s.wait_for_stopped(buffer_full, timeout=within)
            # A backlog is waiting in the stream's buffer: take it too, up to max_, instead of
            # cutting the batch at the window (each batch pays a producer flush).
            while not buffer_full.is_set() and not s.channel.empty() and not s.should_stop:
                await s.wait_for_stopped(buffer_full, timeout=within)
            if not events:
                continue
            consuming = asyncio.get_running_loop().create_future()
            try:
                yield list(events)
            finally:
                if ack:
                    for event in events:
                        await s.ack(event)
                events.clear()
                notify(consuming)
                first_arrived.clear()
                buffer_full.clear()
                consumed.set()
    finally:
        s.enable_acks = enable_acks
        s._processors.remove(add_to_buffer)


def focus(stream: StreamT, event: EventT) -> None:
    """Make ``event`` the current one in this task: Faust picks a table's store from it.

    Only the task's context variable (what ``faust.streams.current_event()``, and so every
    table and store, reads) is set, not ``stream.current_event``: the compute task works under
    events of the router's stream too (the high fast path), and the router's ``micro_batches``
    reads ``stream.current_event`` to collect each new event, so setting it from another task
    swapped a just-arrived verdict for an old one (seen: 2-5 of 1,600 verdicts never routed).
    """
    del stream  # the event's own stream; deliberately left alone (above)
    faust_streams._current_event.set(weakref.ref(event))
