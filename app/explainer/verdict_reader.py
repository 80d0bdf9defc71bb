"""Reading a transaction's verdict back from ``verdicts``, for an on-demand counterfactual.

The search needs the card state the verdict carries (``replay``), and no table keeps it: a
contributions request leaves it out (it would add ~570 bytes to each of its updates). A
counterfactual asked for after its verdict was routed reads that verdict back: in the
transaction's partition (verdicts, requests and rows of one transaction share a partition
number), from the offset of its ``scored_at`` less a margin, forward to the first record keyed by
the transaction. A verdict the topic no longer holds (retention) is an answer too: the request
ends ``failed`` with the reason.
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import orjson

from app.kafka import topics
from app.settings import SharedSettings

log = logging.getLogger(__name__)
MARGIN_S = 5.0  # a verdict's record timestamp is its producer's, within ms of scored_at
SCAN_MAX = 20_000  # records read past the start at most (a partition at 500 tx/s: ~40 s of them)
READ_TIMEOUT_S = 10.0


class VerdictReader:
    """One consumer (no group), made on first use; ``read`` blocks (call it from a thread)."""

    def __init__(self, settings: SharedSettings, consumer_factory: Any = None) -> None:
        self.settings = settings
        self._factory = consumer_factory
        self._consumer: Any = None

    def _client(self) -> Any:
        if self._consumer is None:
            from confluent_kafka import Consumer

            from app.kafka.admin import client_config

            config = client_config(
                self.settings,
                **{"group.id": f"fraudlens-verdict-reader-{uuid.uuid4().hex[:8]}",
                   "enable.auto.commit": False, "log_level": 2},
            )  # fmt: skip
            self._consumer = (self._factory or Consumer)(config)
        return self._consumer

    def read_many(self, wanted: Mapping[str, tuple[int, str]]) -> dict[str, dict[str, Any] | str]:
        """transaction id → its verdict, or why it cannot be read; ``wanted`` maps each to its
        partition and ``scored_at``."""
        out: dict[str, dict[str, Any] | str] = {}
        for txid, (partition, scored_at) in wanted.items():
            try:
                out[txid] = self.read(txid, partition, scored_at)
            except Exception as exc:  # the broker away, a topic gone: the request says why
                out[txid] = f"could not read verdicts[{partition}]: {exc}"[:300]
        return out

    def read(self, txid: str, partition: int, scored_at: str) -> dict[str, Any] | str:
        from confluent_kafka import TopicPartition

        consumer = self._client()
        since_ms = int((datetime.fromisoformat(scored_at).timestamp() - MARGIN_S) * 1000)
        (start,) = consumer.offsets_for_times([TopicPartition(topics.VERDICTS, partition, since_ms)], 10)
        low, high = consumer.get_watermark_offsets(TopicPartition(topics.VERDICTS, partition), 10)
        offset = start.offset if start.offset >= 0 else high
        if offset >= high:
            return _gone(txid, partition, low, high)
        consumer.assign([TopicPartition(topics.VERDICTS, partition, max(offset, low))])
        deadline, scanned = time.monotonic() + READ_TIMEOUT_S, 0
        try:
            while scanned < SCAN_MAX and time.monotonic() < deadline:
                for message in consumer.consume(500, timeout=0.5):
                    if message.error() is not None:
                        continue
                    scanned += 1
                    if message.key() == txid.encode():
                        verdict = orjson.loads(message.value())
                        if isinstance(verdict, dict) and verdict.get("transaction_id") == txid:
                            return verdict
                    if message.offset() >= high - 1:
                        return _gone(txid, partition, low, high)
        finally:
            consumer.unassign()
        return f"verdict of {txid} not in verdicts[{partition}] ({scanned} records read from offset {offset})"

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()


def _gone(txid: str, partition: int, low: int, high: int) -> str:
    return (
        f"the verdict of {txid} is no longer in verdicts[{partition}] (offsets {low}-{high}: retention); "
        "a counterfactual needs the card state it carries"
    )
