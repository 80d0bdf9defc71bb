"""Records on the explainer's internal topics that no contract allows: counted, logged, skipped.

``verdicts`` and ``explain.high|normal|low`` are written by fraudlens itself; a record there that
fails its schema (or is keyed by something other than its transaction id) comes from a
misconfigured client. It has no DLQ of its own (nobody outside fraudlens should write there, and
a DLQ that copies internal traffic would hide the misconfiguration behind a second topic): the
explainer counts it (``fraudlens_explainer_skipped_records_total{topic}``), logs it at most once
per ``every_s`` per topic with how many were skipped since the last line, and goes on.
"""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

import fastjsonschema
import orjson

from app.records import contracts
from app.runtime import metrics

log = logging.getLogger(__name__)


class Skips:
    """Counts skipped records per topic; one WARNING line per topic per ``every_s`` at most."""

    def __init__(self, every_s: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s, self.clock = every_s, clock
        self.total: Counter[str] = Counter()
        self._unlogged: Counter[str] = Counter()
        self._logged_at: dict[str, float] = {}

    def skip(self, topic: str, where: str, reason: str) -> None:
        metrics.EXPLAINER_SKIPPED.labels(topic=topic).inc()
        self.total[topic] += 1
        self._unlogged[topic] += 1
        now = self.clock()
        if now - self._logged_at.get(topic, -self.every_s) < self.every_s:
            return
        log.warning(
            "skipped %d record(s) on %s that no contract allows (a misconfigured client writes there?); "
            "latest at %s: %s",
            self._unlogged[topic], topic, where, reason[:200],
        )  # fmt: skip
        self._logged_at[topic], self._unlogged[topic] = now, 0


def contract_problem(value: bytes | None, key: bytes | None, schema: str) -> str | None:
    """Why an internal record (a verdict or an explain request) breaks its contract, or None.

    Checked: a JSON object valid against ``schemas/<schema>.schema.json``, keyed by its
    ``transaction_id`` (the partition that owns the transaction's row)."""
    return checked_record(value, key, schema)[1]


def checked_record(
    value: bytes | None, key: bytes | None, schema: str
) -> tuple[dict[str, Any], None] | tuple[None, str]:
    """``contract_problem`` with the object it parsed: (object, None), or (None, why not).

    The caller uses that object instead of parsing the value again (docs/cost.md, lever 6); the
    schemas have no ``default``, so validation leaves it as parsed."""
    if not value:
        return None, "null value (a tombstone)" if value is None else "empty value"
    try:
        obj = orjson.loads(value)
        contracts.validator(schema)(obj)
    except orjson.JSONDecodeError as exc:
        return None, f"not JSON: {str(exc)[:120]}"
    except fastjsonschema.JsonSchemaException as exc:
        return None, f"not a valid {schema}: {ascii(str(exc))[:160]}"
    if key != obj["transaction_id"].encode():
        return None, f"key {ascii(key[:64]) if key is not None else 'None'} is not its transaction_id"
    return obj, None
