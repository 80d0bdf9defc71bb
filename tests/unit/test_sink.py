"""The scorer's librdkafka sink: acks awaited, refusals raised, changelog offsets reported."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from confluent_kafka import KafkaError, KafkaException

from app.kafka.sink import DeliveryFailed, Sink
from app.settings import Settings
from tests.unit.kafka_fakes import FakeMessage as _Message


class FakeProducer:
    """Queues produce calls; ``flush`` acks them (or refuses the topics in ``refuse``)."""

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config
        self.queued: list[tuple[str, int, Any]] = []
        self.offsets: dict[tuple[str, int], int] = {}
        self.refuse: set[str] = set()
        self.full_once = False
        self.polled = 0

    def produce(self, topic: str, key: Any, value: Any, on_delivery: Any, partition: int = 0) -> None:
        if self.full_once:
            self.full_once = False
            raise BufferError("queue full")
        self.queued.append((topic, partition, on_delivery))

    def poll(self, timeout: float) -> int:
        self.polled += 1
        return 0

    def flush(self, timeout: float) -> int:
        for topic, partition, callback in self.queued:
            offset = self.offsets.get((topic, partition), -1) + 1
            self.offsets[(topic, partition)] = offset
            callback("refused" if topic in self.refuse else None, _Message(topic, partition, offset))
        self.queued.clear()
        return 0


def _sink() -> tuple[Sink, FakeProducer]:
    made: list[FakeProducer] = []

    def factory(config: dict[str, Any]) -> FakeProducer:
        made.append(FakeProducer(config))
        return made[0]

    return Sink(Settings(), producer_factory=factory), made[0]


def test_flush_reports_the_highest_acked_changelog_offset_per_partition() -> None:
    sink, producer = _sink()
    for key in (b"a", b"b", b"c"):
        sink.changelog("app-predictions-changelog", 2, key, b"v")
    sink.changelog("app-predictions-changelog", 0, b"d", b"v")
    sink.produce("verdicts", b"a", b"v")
    highest = asyncio.run(sink.flush())
    assert highest == {("app-predictions-changelog", 2): 2, ("app-predictions-changelog", 0): 0}
    assert asyncio.run(sink.flush()) == {}  # reported once
    assert producer.config["acks"] == "all" and producer.config["enable.idempotence"] is True


def test_a_refused_record_fails_the_flush() -> None:
    sink, producer = _sink()
    producer.refuse.add("verdicts")
    sink.produce("verdicts", b"a", b"v")
    with pytest.raises(DeliveryFailed, match=r"verdicts\[0\]: refused"):
        asyncio.run(sink.flush())
    sink.produce("transactions.dlq", b"a", b"v")
    assert asyncio.run(sink.flush()) == {}  # the failure is reported once, not forever


def test_records_left_unacked_fail_the_flush() -> None:
    sink, producer = _sink()
    producer.flush = lambda timeout: 3  # type: ignore[method-assign]
    with pytest.raises(DeliveryFailed, match="3 records not acked"):
        asyncio.run(sink.flush(timeout_s=1))


def test_a_full_local_queue_is_served_then_the_record_is_queued() -> None:
    sink, producer = _sink()
    producer.full_once = True
    sink.produce("verdicts", b"a", b"v")
    assert producer.polled == 1 and len(producer.queued) == 1


def test_the_sink_compresses_with_the_configured_codec() -> None:
    configs: list[dict[str, Any]] = []

    def factory(config: dict[str, Any]) -> FakeProducer:
        configs.append(config)
        return FakeProducer(config)

    Sink(Settings(), producer_factory=factory)
    Sink(Settings(compression="zstd"), producer_factory=factory)
    Sink(Settings(compression="none"), producer_factory=factory)
    assert [c["compression.type"] for c in configs] == ["lz4", "zstd", "none"]
    with pytest.raises(ValueError):
        Settings(compression="brotli")  # type: ignore[arg-type]


class RefusingProducer(FakeProducer):
    """Refuses records synchronously (as librdkafka does with MSG_SIZE_TOO_LARGE) ``times`` times."""

    def __init__(self, config: dict[str, Any], times: int) -> None:
        super().__init__(config)
        self.times = times

    def produce(self, topic: str, key: Any, value: Any, on_delivery: Any, partition: int = 0) -> None:
        if self.times:
            self.times -= 1
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))
        super().produce(topic, key, value, on_delivery, partition)


def test_a_record_refused_at_once_is_retried_with_a_growing_pause_then_raises() -> None:
    sink = Sink(Settings(), producer_factory=lambda config: RefusingProducer(config, times=100))
    pauses: list[float] = []
    sink.sleep = pauses.append
    with pytest.raises(DeliveryFailed, match=r"transactions\.dlq"):
        sink.produce("transactions.dlq", b"k", b"v" * 10)
    assert pauses == sorted(pauses) and len(pauses) == len(sink.refusal_backoff_s) and pauses[0] > 0


def test_a_record_refused_once_is_queued_on_the_next_try() -> None:
    sink = Sink(Settings(), producer_factory=lambda config: RefusingProducer(config, times=1))
    pauses: list[float] = []
    sink.sleep = pauses.append
    sink.produce("verdicts", b"k", b"v")
    assert len(pauses) == 1 and len(sink._producer.queued) == 1


def test_a_refusal_after_queueing_names_what_the_record_was_for() -> None:
    sink, producer = _sink()
    producer.refuse.add("transactions.dlq")
    sink.produce("transactions.dlq", b"a", b"v", about="the DLQ record of transactions[3] offset 17")
    with pytest.raises(DeliveryFailed, match=r"transactions\[3\] offset 17"):
        asyncio.run(sink.flush())


def _marked_sink() -> tuple[Sink, FakeProducer, list[str]]:
    marks: list[str] = []
    producer = FakeProducer({})
    return Sink(Settings(), lambda config: producer, rebuild_mark=marks.append), producer, marks


@pytest.mark.parametrize("kind", ["changelog", "produce", "about"])
def test_an_ack_at_an_offset_acked_before_means_the_broker_lost_writes(kind: str) -> None:
    """A broker restarted without its last acked writes hands their offsets out again: the sink
    refuses to go on (its stores and the broker no longer agree) and leaves the rebuild mark once."""
    sink, producer, marks = _marked_sink()
    send = {
        "changelog": lambda: sink.changelog("t-changelog", 1, b"k", b"v"),
        "produce": lambda: sink.produce("verdicts", b"k", b"v", partition=1),
        "about": lambda: sink.produce("transactions.dlq", b"k", b"v", partition=1, about="transactions[1]@7"),
    }[kind]
    for _ in range(3):
        send()
    sink.flush_now()  # offsets 0, 1, 2 acked
    topic = {"changelog": "t-changelog", "produce": "verdicts", "about": "transactions.dlq"}[kind]
    producer.offsets[(topic, 1)] = 0  # the restarted broker's partition ends at 1 (offsets 1, 2 lost)
    send()
    send()
    with pytest.raises(
        DeliveryFailed,
        match=r"lost acked writes.*: [a-z._-]+\[1\]: acked at offset 1 after offset 2 was acked$",
    ):
        sink.flush_now()
    assert marks == [f"{topic}[1] acked at 1 after 2"]
    with pytest.raises(DeliveryFailed, match="lost acked writes"):  # never cleared
        sink.flush_now()


def test_acks_rising_per_partition_are_no_loss() -> None:
    sink, producer, marks = _marked_sink()
    for partition in (0, 1, 0, 1, 2):  # each partition's own offsets rise; they interleave
        sink.changelog("t-changelog", partition, b"k", b"v")
        sink.produce("verdicts", b"k", b"v", partition=partition)
    assert sink.flush_now() == {("t-changelog", 0): 1, ("t-changelog", 1): 1, ("t-changelog", 2): 0}
    # an ack at the highest offset again: noida-db's answer to a batch retried across its
    # restart (nothing lost), not a loss
    producer.offsets[("t-changelog", 2)] = -1
    sink.changelog("t-changelog", 2, b"k", b"v")
    sink.flush_now()
    assert marks == []
