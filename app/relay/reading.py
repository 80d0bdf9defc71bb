"""What the relay accepts from its input topics, and how it skips the rest.

``verdicts`` and ``explanation.updates`` are written by the scorer and the explainer, but any Kafka
client can write to them: a misconfigured one may leave tombstones, empty or huge values, bytes
that are not UTF-8 or not JSON, or JSON with wrong types in any field. A record is passed on only
when it is a JSON object that meets its topic's contract (``schemas/verdict.schema.json``,
``schemas/explanation.schema.json``) and is at most ``max_bytes`` long: everything the relay sends
embeds it, so a record outside the contract would reach every client (and a 1 MB one would be
copied to each of them). Everything else is a skip: counted by topic and reason (the metric
``fraudlens_relay_skipped_records_total``), and logged at most once per ``every_s``.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from enum import StrEnum
from typing import Any

import orjson

from app.kafka import topics
from app.records.contracts import ContractViolation, validate_message
from app.runtime import metrics

log = logging.getLogger(__name__)

CONTRACTS = {topics.VERDICTS: "verdict", topics.EXPLANATION_UPDATES: "explanation"}
SKIP_LOG_EVERY_S = 10.0


class SkipReason(StrEnum):
    TOMBSTONE = "tombstone"  # a null value
    EMPTY = "empty"
    TOO_LARGE = "too_large"
    NOT_JSON = "not_json"  # not UTF-8, not JSON, or JSON beyond the parser's limits
    NOT_OBJECT = "not_object"
    CONTRACT = "contract"  # a JSON object its topic's schema refuses
    UNEXPECTED = "unexpected"  # valid, yet the relay's state could not take it (a bug in the relay)


class Skip(Exception):
    def __init__(self, reason: SkipReason, detail: str) -> None:
        super().__init__(detail)
        self.reason, self.detail = reason, detail


def read_record(topic: str, value: bytes | None, max_bytes: int) -> dict[str, Any]:
    """The message of one record, or ``Skip`` saying why not. The value itself is never quoted
    in the detail: it may carry card ids."""
    if value is None:
        raise Skip(SkipReason.TOMBSTONE, "a tombstone (null value)")
    if not value:
        raise Skip(SkipReason.EMPTY, "an empty value")
    if len(value) > max_bytes:
        raise Skip(SkipReason.TOO_LARGE, f"{len(value)} bytes, over the relay's {max_bytes}")
    try:
        message = orjson.loads(value)
    except orjson.JSONDecodeError:
        raise Skip(SkipReason.NOT_JSON, f"{len(value)} bytes that are not UTF-8 JSON") from None
    if not isinstance(message, dict):
        raise Skip(SkipReason.NOT_OBJECT, f"JSON {type(message).__name__}, not an object")
    contract = CONTRACTS[topic]
    try:
        validate_message(contract, message)
    except ContractViolation as exc:
        raise Skip(SkipReason.CONTRACT, f"violates {contract}.schema.json at {exc.path or '/'}") from None
    if topic == topics.EXPLANATION_UPDATES:
        # The explainer's own bookkeeping (the topic is also its table's changelog): not for
        # clients, and ~1 KB of features per update the relay would keep and send for nothing.
        message.pop("source", None)
        message.pop("request", None)
    return message


class SkippedRecords:
    """Counts skips; logs the first at once, then one summary line per ``every_s`` at most (a
    producer writing garbage at 10,000 records/s must not turn the relay's log into a copy)."""

    def __init__(
        self, every_s: float = SKIP_LOG_EVERY_S, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.every_s, self.clock = every_s, clock
        self.total = 0
        self.unlogged: Counter[tuple[str, str]] = Counter()
        self.last_detail = ""
        self.next_log = 0.0

    def note(self, topic: str, skip: Skip) -> None:
        self.total += 1
        metrics.RELAY_SKIPPED.labels(topic, skip.reason.value).inc()
        self.unlogged[(topic, skip.reason.value)] += 1
        self.last_detail = f"{topic}: {skip.detail}"
        if self.total == 1:
            log.warning(
                "relay: skipping a record on %s: %s; further skips are summed up every %.0f s",
                topic, skip.detail, self.every_s,
            )  # fmt: skip
            self.unlogged.clear()
            self.next_log = self.clock() + self.every_s
        else:
            self.flush()

    def flush(self) -> None:
        """Log what was skipped since the last line, if the interval has passed."""
        now = self.clock()
        if not self.unlogged or now < self.next_log:
            return
        counts = ", ".join(f"{t}/{r} {n}" for (t, r), n in sorted(self.unlogged.items()))
        log.warning(
            "relay: skipped %d records in the last %.0f s (%s); the last: %s",
            sum(self.unlogged.values()), self.every_s, counts, self.last_detail,
        )  # fmt: skip
        self.unlogged.clear()
        self.next_log = now + self.every_s
