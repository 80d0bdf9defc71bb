"""Table recovery: bring a partition's local stores up to its changelog before it is scored.

Run for every newly assigned partition, before the first transaction of it is read. Each store
remembers the highest changelog offset it holds (``LocalTable.persisted_offset``); recovery reads
the changelog from the next offset (or from the earliest retained one for a new or wiped store)
to the partition's end and writes it into the store in batches, as Faust's recovery does. The
store may also hold writes that are *ahead* of the changelog (a SIGKILL between the store write
and the flush): the scorer writes a re-sent transaction's stored rows again before it re-sends
the verdict, so such rows reach the changelog then (``app.model.batch.BatchScorer._resend``).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from app.kafka.admin import client_config
from app.kafka.local_table import LocalTable
from app.kafka.outage import Outage, quiet_client_logs
from app.settings import SharedSettings

log = logging.getLogger(__name__)


class RecoveryStalled(RuntimeError):
    """The changelog stopped answering before its end was read."""


@dataclass
class _Reading:
    table: LocalTable
    partition: int
    start: int
    high: int
    records: int = 0


@dataclass
class RecoveryReport:
    records: dict[tuple[str, int], int] = field(default_factory=dict)  # (table, partition) → read
    seconds: float = 0.0
    # changelog partitions whose end is below what the store holds: the broker lost acked writes
    # (or the topic was trimmed or recreated)
    ahead: list[str] = field(default_factory=list)

    @property
    def total(self) -> int:
        return sum(self.records.values())


def recover(
    settings: SharedSettings,
    tables: Iterable[LocalTable],
    partitions: Iterable[int],
    consumer_factory: Callable[[dict[str, Any]], Any] | None = None,
    stall_s: float = 60.0,
) -> RecoveryReport:
    """Read each table's changelog for ``partitions`` into its stores; raises RecoveryStalled if
    nothing arrives for ``stall_s`` seconds before the end."""
    from confluent_kafka import Consumer, TopicPartition

    began = time.monotonic()
    quiet = Outage(f"{settings.app_id}: table recovery", log)  # its reconnects: one line, not each
    consumer = (consumer_factory or Consumer)(
        quiet_client_logs(
            client_config(
                settings,
                **{
                    "group.id": f"{settings.app_id}-recovery-{uuid.uuid4().hex[:8]}",  # never committed
                    "enable.auto.commit": False,
                    "enable.partition.eof": True,
                    "auto.offset.reset": "earliest",
                    "fetch.wait.max.ms": 100,
                },
            ),
            quiet,
        )
    )
    ahead: list[str] = []
    try:
        readings = _plan(consumer, tables, partitions, ahead)
        if readings:
            consumer.assign(
                [TopicPartition(topic, r.partition, r.start) for (topic, _), r in readings.items()]
            )
            _read(consumer, readings, stall_s)
    finally:
        consumer.close()
    report = RecoveryReport({(r.table.name, r.partition): r.records for r in readings.values()}, ahead=ahead)
    report.seconds = time.monotonic() - began
    return report


def _plan(
    consumer: Any, tables: Iterable[LocalTable], partitions: Iterable[int], ahead: list[str]
) -> dict[tuple[str, int], _Reading]:
    from confluent_kafka import TopicPartition

    readings: dict[tuple[str, int], _Reading] = {}
    wanted = sorted(set(partitions))
    for table in tables:
        topic = table.changelog_topic
        for partition in wanted:
            low, high = consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)
            persisted = table.persisted_offset(partition)
            start = low if persisted is None else max(persisted + 1, low)
            if persisted is not None and persisted >= high:
                log.warning(
                    "%s[%d]: the store holds offset %d but the changelog ends at %d (trimmed or recreated)",
                    topic, partition, persisted, high,
                )  # fmt: skip
                ahead.append(f"{topic}[{partition}] holds {persisted}, ends at {high}")
            if start < high:
                readings[(topic, partition)] = _Reading(table, partition, start, high)
    return readings


def _read(consumer: Any, readings: dict[tuple[str, int], _Reading], stall_s: float) -> None:
    from confluent_kafka import KafkaError

    pending = set(readings)
    last_progress = time.monotonic()
    while pending:
        messages = consumer.consume(10_000, timeout=0.5)
        batches: dict[tuple[str, int], list[tuple[bytes, bytes | None]]] = {}
        last: dict[tuple[str, int], int] = {}
        for message in messages:
            tp = (message.topic(), message.partition())
            error = message.error()
            if error is not None:
                if error.code() == KafkaError._PARTITION_EOF:
                    pending.discard(tp)
                    continue
                raise RecoveryStalled(f"reading {tp[0]}[{tp[1]}]: {error}")
            batches.setdefault(tp, []).append((message.key(), message.value()))
            last[tp] = message.offset()
        for tp, records in batches.items():
            reading = readings[tp]
            reading.table.apply_changelog(reading.partition, records, last[tp])
            reading.records += len(records)
            if last[tp] >= reading.high - 1:
                pending.discard(tp)
        if messages:
            last_progress = time.monotonic()
        elif time.monotonic() - last_progress > stall_s:
            raise RecoveryStalled(
                f"no changelog records for {stall_s:.0f} s; still reading {sorted(pending)}"
            )
