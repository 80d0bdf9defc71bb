"""Table rows, verdicts and DLQ records through librdkafka, acked on demand.

Measured (one scorer draining a backlog, batches of 1,000): through Faust's producer, each table
write and each send is a ``FutureMessage`` that passes an asyncio queue and aiokafka's Python
record accumulator, ~200 µs of CPU per message; flushing one batch's ~2,000 changelog rows took
~450 ms and held one scorer to ~1,300 tx/s. librdkafka does the same in C (a few µs per
message). The scorer (which has no Faust at all) and the explainer (whose Faust tables write
their stores directly, ``app.explainer.table_io``) send through this sink:

- ``changelog`` queues a table's changelog record: the source record's partition, the raw
  bytes stored, so recovery reads it exactly as Faust's ``send_changelog`` would have written it;
- ``flush`` (or ``flush_now``, blocking, for a caller without an event loop) waits until the
  broker acked everything queued (acks=all), returns each changelog partition's highest acked
  offset (the store's persisted offset), and raises :class:`DeliveryFailed` if any record was
  refused: the caller must not count the work done then, so it is redone after a restart;
- ``produce`` raises :class:`DeliveryFailed` too for a record the client refuses at once (too
  large for ``message.max.bytes``, unknown topic), after five more tries with a doubling pause;
  ``about`` names what the record was for (e.g. a DLQ record's source offset) in either error.

A broker acks each partition's records at rising offsets. An ack below one it gave before
means it lost acked writes and hands their offsets out again (the embedded broker's noida-db
SIGKILLed: docs/limits.md; Kafka after an unclean leader election): the flush raises
:class:`BrokerLostWrites`, and a sink given ``rebuild_mark`` first leaves that file, so the
restarted worker rebuilds its stores from the changelogs (``app.explainer.stores_ahead``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from functools import partial
from typing import Any

from confluent_kafka import KafkaException

from app.kafka.admin import producer_config
from app.settings import SharedSettings


class DeliveryFailed(RuntimeError):
    """The broker refused (or never acked) a record the scorer must not lose."""


class BrokerLostWrites(DeliveryFailed):
    """The broker acked a record at an offset it had already acked another at."""


class Sink:
    """One librdkafka producer; ``produce`` queues, ``await flush()`` waits for the acks."""

    def __init__(
        self,
        settings: SharedSettings,
        producer_factory: Callable[[dict[str, Any]], Any] | None = None,
        linger_ms: float | None = None,
        rebuild_mark: Callable[[str], None] | None = None,
        client_id: str | None = None,
    ):
        """``client_id`` names the sink's user in broker logs [``<app_id>-sink``]."""
        if producer_factory is None:
            from confluent_kafka import Producer

            producer_factory = Producer
        config = producer_config(
            settings,
            **{
                "acks": "all",
                "enable.idempotence": True,  # retries neither duplicate nor reorder
                "partitioner": "murmur2_random",  # the Java client's (and Faust's) key -> partition
                "linger.ms": settings.producer_linger_ms if linger_ms is None else linger_ms,
                "batch.num.messages": 10_000,
                "queue.buffering.max.messages": 1_000_000,
                "message.max.bytes": max(1_000_000, 2 * settings.max_message_bytes + 4096),
                "client.id": client_id or f"{settings.app_id}-sink",
            },
        )
        self._producer = producer_factory(config)
        # Pauses between tries of a record the client refuses at once (``_produce``).
        self.refusal_backoff_s: tuple[float, ...] = (0.1, 0.2, 0.4, 0.8, 1.6)
        self.sleep: Callable[[float], None] = time.sleep
        self._flusher = ThreadPoolExecutor(1, thread_name_prefix="sink-flush")
        self._errors: list[str] = []
        self._highest: dict[tuple[str, int], int] = {}  # changelog tp -> highest acked offset
        self._acked: dict[tuple[str, int], int] = {}  # every tp -> highest offset ever acked
        self._lost: list[str] = []
        self._rebuild_mark = rebuild_mark

    @property
    def acked_any(self) -> bool:
        """Whether the broker acked anything of this producer yet (it has sequence state)."""
        return bool(self._acked)

    def produce(
        self, topic: str, key: bytes | None, value: bytes, partition: int | None = None, about: str = ""
    ) -> None:
        """Queue a record; ``about`` names what it is for in a refusal's error (e.g. the source
        offset of a DLQ record), so the one line a stopping worker logs says which input it was."""
        callback = self._delivered if not about else partial(self._delivered_about, about)
        self._produce(topic, key, value, partition, callback, about)

    def changelog(self, topic: str, partition: int, key: bytes, value: bytes) -> None:
        self._produce(topic, key, value, partition, self._changelog_delivered)

    def _produce(
        self,
        topic: str,
        key: bytes | None,
        value: bytes,
        partition: int | None,
        callback: Callable[..., None],
        about: str = "",
    ) -> None:
        kwargs: dict[str, Any] = {"key": key, "value": value, "on_delivery": callback}
        if partition is not None:
            kwargs["partition"] = partition
        refusals = 0
        while True:
            try:
                self._producer.produce(topic, **kwargs)
                return
            except BufferError:  # local queue full: serve deliveries, then try again
                self._producer.poll(0.05)
            except KafkaException as exc:
                # Refused before it was queued (too large for message.max.bytes, unknown topic...):
                # a few tries with a doubling pause, then the caller decides; never dropped here.
                if refusals >= len(self.refusal_backoff_s):
                    what = f"{topic} ({about})" if about else topic
                    raise DeliveryFailed(f"{what}: {exc.args[0] if exc.args else exc}") from None
                self.sleep(self.refusal_backoff_s[refusals])
                refusals += 1

    # Delivery reports run on the thread that flushes; list.append and dict stores are atomic.
    def _delivered(self, err: Any, message: Any) -> None:
        if err is not None:
            self._errors.append(f"{message.topic()}[{message.partition()}]: {err}")
        else:
            self._check_rising(message)

    def _delivered_about(self, about: str, err: Any, message: Any) -> None:
        if err is not None:
            self._errors.append(f"{message.topic()}[{message.partition()}] ({about}): {err}")
        else:
            self._check_rising(message)

    def _changelog_delivered(self, err: Any, message: Any) -> None:
        if err is not None:
            self._errors.append(f"{message.topic()}[{message.partition()}]: {err}")
        else:
            self._check_rising(message)
            tp = (message.topic(), message.partition())
            offset = message.offset()
            if offset > self._highest.get(tp, -1):
                self._highest[tp] = offset

    def _check_rising(self, message: Any) -> None:
        """An ack below an offset acked before: the broker lost acked writes. An ack *at* the
        highest one is not taken for a loss: noida-db answers a batch retried across its
        restart (SIGTERM, nothing lost) with that offset (seen in the fault suite's
        broker_restart); a loss of exactly the last acked record goes unseen here."""
        tp, offset = (message.topic(), message.partition()), message.offset()
        if offset is None or offset < 0:  # a client that reports no offset: nothing to compare
            return
        before = self._acked.get(tp, -1)
        if offset >= before:
            self._acked[tp] = offset
            return
        if not self._lost and self._rebuild_mark is not None:
            self._rebuild_mark(f"{tp[0]}[{tp[1]}] acked at {offset} after {before}")
        self._lost.append(f"{tp[0]}[{tp[1]}]: acked at offset {offset} after offset {before} was acked")

    def _flush(self, timeout_s: float) -> tuple[int, list[str], dict[tuple[str, int], int]]:
        # Delivery reports run on the flushing thread: no report lands in between. One sink is
        # flushed from one thread only (the flusher for ``flush``, the caller for ``flush_now``).
        left = int(self._producer.flush(timeout_s))
        if self._lost:  # never cleared: the stores no longer match the broker
            raise BrokerLostWrites(
                f"the broker lost acked writes and hands their offsets out again: {self._lost[0]}"
                + (f" (+{len(self._lost) - 1} more)" if len(self._lost) > 1 else "")
            )
        errors, self._errors = self._errors, []
        highest, self._highest = self._highest, {}
        return left, errors, highest

    async def flush(self, timeout_s: float = 60.0) -> dict[tuple[str, int], int]:
        """Wait for every queued record's ack; the highest changelog offset acked per partition
        since the last flush. Raises :class:`DeliveryFailed` if any record was refused."""
        loop = asyncio.get_running_loop()
        return _checked(*await loop.run_in_executor(self._flusher, self._flush, timeout_s), timeout_s)

    def flush_now(self, timeout_s: float = 60.0) -> dict[tuple[str, int], int]:
        """``flush`` for a caller with no event loop (the scorer): blocks this thread."""
        return _checked(*self._flush(timeout_s), timeout_s)

    def close(self, timeout_s: float = 10.0) -> None:
        self._producer.flush(timeout_s)
        self._flusher.shutdown(wait=False)


def _checked(
    left: int, errors: list[str], highest: dict[tuple[str, int], int], timeout_s: float
) -> dict[tuple[str, int], int]:
    if left:
        errors.append(f"{left} records not acked within {timeout_s:.0f} s")
    if errors:
        more = f" (+{len(errors) - 5} more)" if len(errors) > 5 else ""
        raise DeliveryFailed("; ".join(errors[:5]) + more)
    return highest
