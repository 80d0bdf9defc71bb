"""What the explainer's router and workers share: table writes through a librdkafka sink,
under each row's own event, and the crash-safety rule (rows acked before the messages that
announce them, events acked after both).

The writes go through ``app.kafka.sink``, as the scorer's do; the tables are Faust's here:
``Table.data[key]`` writes the store of the *current event's* partition, so ``focus`` makes the
row's own event current first; the changelog record goes to that same partition.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from datetime import UTC, datetime
from functools import partial
from typing import Any, NoReturn, cast

import orjson
from faust.types import TP, EventT, StreamT

from app.explainer.faust_patches import focus
from app.explainer.stores_ahead import mark_for_rebuild
from app.kafka.outage import fatal_exit
from app.kafka.sink import DeliveryFailed, Sink
from app.records.contracts import format_utc
from app.settings import SharedSettings

log = logging.getLogger(__name__)


def named_sink(settings: SharedSettings, name: str) -> Sink:
    """A sink whose librdkafka client id names its user (router or worker) in broker logs."""
    from confluent_kafka import Producer

    from app.kafka.outage import Outage, quiet_client_logs, stop_on_fatal

    # Reconnects logged once per outage; a fatal client error stops the process (issue 23).
    outage = Outage(f"explainer {name}", log, on_fatal=stop_on_fatal(f"explainer {name}", log))
    return Sink(
        settings,
        lambda config: Producer(quiet_client_logs(config, outage)),
        # a broker that lost acked writes: the stores are rebuilt at the restart that follows
        rebuild_mark=partial(mark_for_rebuild, settings.worker_dir),
        client_id=f"{settings.explainer_group}-{name}",
    )


def utc_now() -> str:
    return format_utc(datetime.now(UTC))


def source_of(event: EventT) -> str:
    """The message that caused a write: topic, partition and offset (stable across replays)."""
    message = event.message
    return f"{message.topic}:{message.partition}:{message.offset}"


class TableWriter:
    """Table rows through one sink; ``flush`` returns once the broker has them all."""

    def __init__(self, sink: Sink, tables: Iterable[Any]) -> None:
        self.sink = sink
        self._tables = {cast(Any, t).changelog_topic_name: t for t in tables}
        self.pending = 0

    def get(self, stream: StreamT, event: EventT, table: Any, key: bytes) -> bytes | None:
        focus(stream, event)
        value: bytes | None = table.get(key)
        return value

    def write(self, stream: StreamT, event: EventT, table: Any, key: bytes, value: bytes) -> None:
        """What ``table[key] = value`` does, with the changelog record sent through the sink."""
        focus(stream, event)
        table.data[key] = value
        try:
            self.sink.changelog(table.changelog_topic_name, event.message.partition, key, value)
        except DeliveryFailed as exc:
            # Refused at once, e.g. the changelog topic is gone (a broker that lost its last
            # second also loses topics created in it): stop; the restarted worker declares its
            # topics again. Raised into the agent it crashed and was restarted in a loop.
            give_up(exc)
        self.pending += 1

    async def flush(self) -> None:
        """Everything queued on the sink is acked; stores learn their persisted offsets."""
        try:
            highest = await self.sink.flush()
        except DeliveryFailed as exc:
            give_up(exc)
        self.pending = 0
        for (topic, partition), offset in highest.items():
            self._tables[topic].data.set_persisted_offset(TP(topic, partition), offset)


def stored_json(raw: bytes | None) -> Any:
    """A table value as JSON; None when absent or not JSON. The ``explanations`` table is
    recovered from ``explanation.updates``, which a misconfigured client may also write."""
    if raw is None:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return None


def give_up(exc: Exception) -> NoReturn:
    # The events stay unacked; a restarted worker replays them from the last commit.
    fatal_exit(log, f"the broker did not take the explainer's records ({exc}): stopping the worker")
