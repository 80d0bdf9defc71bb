"""The relay's Kafka side: its own consumer over every partition (no group), and the producer
of on-demand explanation requests. librdkafka runs on a thread; batches cross to the loop."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import orjson
from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, Producer, TopicPartition

from app.kafka import topics
from app.kafka.admin import client_config, producer_config
from app.records.validation import explain_request_record
from app.relay.feed import FeedChange, FeedWatch, feed_problem
from app.settings import RelaySettings

log = logging.getLogger(__name__)

# (topic, value bytes or None for a tombstone, Kafka timestamp in ms)
Record = tuple[str, bytes | None, int]
MAX_BATCH = 500
MAX_BATCHES_IN_FLIGHT = 8  # bounds what waits for the loop if it falls behind the consumer
INPUT_TOPICS = (topics.VERDICTS, topics.EXPLANATION_UPDATES)
DELIVERY_TIMEOUT_S = 10.0  # an explain_now is acked or refused within this
STATS_INTERVAL_MS = 1000  # how often the feed's health is judged (app.relay.feed)
# Codes that only say the brokers are unreachable: the feed status reports those, once per outage.
UNREACHABLE = frozenset({KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN, KafkaError._TIMED_OUT})


class StreamReader(threading.Thread):
    """Reads every partition of ``verdicts`` and ``explanation.updates`` from the earliest
    retained offset. No consumer group: every relay instance sees every record. Tells
    ``on_feed`` when it can no longer read them, and when it can again (``app.relay.feed``).

    Batches cross to the loop through ``pump``, one batch per turn of the loop: the clients'
    writers take what one batch queued for them before the next is fanned out, so a relay that
    falls seconds behind (a starved CPU, a backlog at start) does not fill a reading client's
    bounded queue in one go and drop it as lagging. ``caught_up`` is set once every record that
    was on the topics when the reader was assigned has been delivered (``/healthz``'s ``ready``).
    """

    def __init__(
        self,
        settings: RelaySettings,
        loop: asyncio.AbstractEventLoop,
        deliver: Callable[[list[Record]], None],
        on_feed: Callable[[FeedChange], None] | None = None,
    ) -> None:
        super().__init__(name="relay-consumer", daemon=True)
        self.settings, self.loop, self.deliver, self.on_feed = settings, loop, deliver, on_feed
        self.stopping = threading.Event()
        self.slots = threading.Semaphore(MAX_BATCHES_IN_FLIGHT)
        self.assigned = threading.Event()
        # (records, whether the catch-up ends with them): ``pump`` says ready once they are delivered
        self.batches: asyncio.Queue[tuple[list[Record], bool]] = asyncio.Queue()
        self.catching_up: dict[tuple[str, int], int] = {}  # partition -> end offset at assignment
        self.caught_up = asyncio.Event()
        self._idle_checked = 0.0
        self.feed = FeedWatch()
        self.consumer = Consumer(client_config(settings, **{
            "group.id": f"{settings.app_id}-relay-{uuid.uuid4().hex[:12]}",  # never joined: assign()
            "enable.auto.commit": False,
            "auto.offset.reset": "earliest",
            "fetch.wait.max.ms": settings.fetch_max_wait_ms,
            "enable.partition.eof": False,
            "statistics.interval.ms": STATS_INTERVAL_MS,
            "stats_cb": self._on_stats,
            "error_cb": self._on_error,
            # librdkafka logs every failed reconnect (20 a second); the feed status says it once
            "log_level": 2,
        }))  # fmt: skip

    def _on_stats(self, text: str) -> None:
        """Every ``STATS_INTERVAL_MS``, on this thread (served by ``poll``)."""
        problem = feed_problem(orjson.loads(text), INPUT_TOPICS, self.settings.relay_feed_stall_s)
        change = self.feed.observe(problem, time.time())
        if change is not None and self.on_feed is not None:
            self.loop.call_soon_threadsafe(self.on_feed, change)

    def _on_error(self, error: KafkaError) -> None:
        if error.code() not in UNREACHABLE:  # authentication, TLS, …: not an outage, say it
            log.warning("relay consumer: %s", error)

    def assign_all(self) -> int:
        wanted = []
        for topic in INPUT_TOPICS:
            metadata = self.consumer.list_topics(topic, timeout=15).topics[topic]
            wanted += [TopicPartition(topic, p, OFFSET_BEGINNING) for p in metadata.partitions]
        for tp in wanted:
            low, high = self.consumer.get_watermark_offsets(tp, timeout=15, cached=False)
            if high > low:
                self.catching_up[(tp.topic, tp.partition)] = high
        self.consumer.assign(wanted)
        self.assigned.set()
        if not self.catching_up:
            self._hand_over([], reached=True)
        return len(wanted)

    def _note_reached(self, batch: list[Any]) -> bool:
        """Partitions read up to their end offset at assignment leave ``catching_up``; True
        when none is left."""
        for message in batch:
            key = (message.topic(), message.partition())
            end = self.catching_up.get(key)
            if end is not None and message.error() is None and message.offset() + 1 >= end:
                del self.catching_up[key]
        return not self.catching_up

    def _note_idle(self) -> bool:
        """Nothing to read while still catching up: records up to an end offset may have been
        deleted (retention) since it was read. A partition whose earliest offset passed its end
        has nothing left to catch up on (asked at most once a second); True when none is left."""
        if time.monotonic() - self._idle_checked >= 1.0:
            self._idle_checked = time.monotonic()
            for (topic, partition), end in list(self.catching_up.items()):
                low, _high = self.consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=5)
                if low >= end:
                    del self.catching_up[(topic, partition)]
        return not self.catching_up

    def run(self) -> None:
        try:
            while not self.stopping.is_set():
                first = self.consumer.poll(0.2)  # returns at once when a record is there
                if first is None:
                    if self.catching_up and self._note_idle():
                        self._hand_over([], reached=True)
                    continue
                batch = [first, *self.consumer.consume(MAX_BATCH - 1, timeout=0)]
                reached = bool(self.catching_up) and self._note_reached(batch)
                records = [self._record(m) for m in batch]
                self._hand_over([r for r in records if r is not None], reached)
        except Exception as exc:  # a dead reader must not leave a relay serving stale data silently
            log.exception("relay consumer thread failed")
            if self.on_feed is not None:  # every client is told its live feed stopped, and why
                now = time.time()
                change = FeedChange("interrupted", now, now, f"the relay's reader failed: {exc!r:.200}")
                self.loop.call_soon_threadsafe(self.on_feed, change)
            raise
        finally:
            self.consumer.close()

    def _record(self, message: Any) -> Record | None:
        error = message.error()
        if error is not None:
            if error.code() != KafkaError._PARTITION_EOF:
                log.warning("relay consumer: %s", error)
            return None
        return message.topic(), message.value(), message.timestamp()[1]

    def _hand_over(self, records: list[Record], reached: bool = False) -> None:
        """To the loop, in order; waits while ``MAX_BATCHES_IN_FLIGHT`` are not delivered yet."""
        if records:
            while not self.slots.acquire(timeout=0.5):
                if self.stopping.is_set():
                    return
        if records or reached:
            self.loop.call_soon_threadsafe(self.batches.put_nowait, (records, reached))

    async def pump(self) -> None:
        """On the loop, until cancelled: each batch to ``deliver``, then a turn of the loop for
        the clients' writers (``asyncio.sleep(0)`` runs the tasks the fan-out woke first)."""
        while True:
            records, reached = await self.batches.get()
            if records:
                try:
                    self.deliver(records)
                finally:
                    self.slots.release()
            if reached:
                self.caught_up.set()
            await asyncio.sleep(0)

    def stop(self) -> None:
        self.stopping.set()


class ExplainRequester:
    """Produces on-demand requests to ``explain.requests``, keyed by transaction id with the
    Java (murmur2) partitioner like every fraudlens writer, so it reaches the partition whose
    explainer owns that transaction's row.

    ``request`` returns or raises only on librdkafka's delivery report, which always comes within
    ``message.timeout.ms``: a request the client is told failed was never written, and one it is
    told succeeded is on the topic (a timeout of our own could say "failed" about a record that is
    written a moment later)."""

    def __init__(self, settings: RelaySettings) -> None:
        self.producer = Producer(producer_config(settings, **{
            "partitioner": "murmur2_random", "linger.ms": 0, "acks": "all",
            "message.timeout.ms": int(DELIVERY_TIMEOUT_S * 1000),
            "log_level": 2, "error_cb": _quiet_when_unreachable,
        }))  # fmt: skip
        self.stopping = threading.Event()
        self.thread = threading.Thread(target=self._poll, name="relay-producer", daemon=True)
        self.thread.start()

    def _poll(self) -> None:
        while not self.stopping.is_set():
            self.producer.poll(0.1)

    async def request(self, transaction_id: str, method: str | None, kind: str | None = None) -> None:
        """Send one request; returns once the broker acked it, raises when it was not written."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()

        def acked(err: Any, _message: Any) -> None:
            def settle() -> None:
                if done.done():
                    return
                if err is None:
                    done.set_result(None)
                else:
                    done.set_exception(RuntimeError(str(err)))

            loop.call_soon_threadsafe(settle)

        value = explain_request_record(transaction_id, method, kind)
        self.producer.produce(
            topics.EXPLAIN_REQUESTS, key=transaction_id.encode(), value=value, on_delivery=acked
        )
        await done  # the delivery report comes within message.timeout.ms, success or not

    def close(self) -> None:
        self.stopping.set()
        self.thread.join(2)
        self.producer.flush(5)


def _quiet_when_unreachable(error: KafkaError) -> None:
    if error.code() not in UNREACHABLE:
        log.warning("relay producer: %s", error)
