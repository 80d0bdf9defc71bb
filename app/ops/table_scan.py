"""Table inspection behind ``fraudlens tables``: read a table from its changelog topic.

Every table write is acked by the broker on the table's changelog topic before the work that
made it is acked (see the scorer's and the explainer's crash-safety ordering), so replaying the
changelog gives the table as the workers hold it — the same answer while they run, after they
stopped, and whichever worker owns a key. It needs no HTTP endpoint on the workers (Faust's
``/table/`` views stay off) and no access to their local RocksDB files. The cost is a read of
the whole changelog per call, which the embedded broker's retention keeps small; on a large
production changelog prefer ``get`` and ``scan --limit`` sparingly.
"""

from __future__ import annotations

import time
import uuid
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from app.explain.state import from_record
from app.kafka.admin import client_config
from app.kafka.table_catalogue import CARD_ACTIVITY, EXPLANATION_WAITING, EXPLANATIONS, PREDICTIONS
from app.kafka.table_catalogue import TableSpec as CatalogueSpec
from app.records.contracts import utc_seconds
from app.records.kinds import CONTRIBUTIONS, kind_of
from app.settings import Settings


@dataclass(frozen=True)
class TableSpec:
    """A table of the catalogue (``app.kafka.table_catalogue``), and how its rows are read here."""

    table: CatalogueSpec
    moment: Callable[[Mapping[str, Any]], float | None]  # the row's time, for --since
    decode: Callable[[Any], Any] | None = None  # a changelog record -> the row (None: not a row)

    @property
    def name(self) -> str:
        return self.table.name

    @property
    def role(self) -> str:
        return self.table.role

    @property
    def help(self) -> str:
        return self.table.summary

    def changelog(self, settings: Settings) -> str:
        return self.table.changelog(settings)


def _verdict_at(row: Mapping[str, Any]) -> float | None:
    return utc_seconds((row.get("timings") or {}).get("verdict_at"))


TABLES: dict[str, TableSpec] = {
    spec.name: spec
    for spec in (
        TableSpec(PREDICTIONS, lambda row: utc_seconds(row.get("scored_at"))),
        TableSpec(
            CARD_ACTIVITY,
            lambda row: row["last"] / 1000 if isinstance(row.get("last"), (int, float)) else None,
        ),
        TableSpec(EXPLANATIONS, _verdict_at, decode=from_record),
        TableSpec(EXPLANATION_WAITING, _verdict_at),
    )
}


class UnknownTable(LookupError):
    def __init__(self, name: str) -> None:
        super().__init__(f"no table {name!r}; tables: {', '.join(TABLES)}")


def spec_of(name: str) -> TableSpec:
    try:
        return TABLES[name]
    except KeyError:
        raise UnknownTable(name) from None


@dataclass
class Snapshot:
    """A table as its changelog holds it: the last value per key (tombstones remove the key)."""

    rows: dict[str, Any]
    partition_of: dict[str, int]
    partitions: int
    unreadable: int  # values that are not JSON (counted, shown as text)


def replay(settings: Settings, spec: TableSpec, timeout_s: float = 60.0) -> Snapshot:
    """Read the table's changelog from its earliest retained offset to its current end."""
    from confluent_kafka import Consumer, TopicPartition

    topic = spec.changelog(settings)
    consumer = Consumer(
        client_config(
            settings,
            **{
                "group.id": f"fraudlens-tables-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "log_level": 2,
            },
        )
    )
    try:
        metadata = consumer.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            return Snapshot({}, {}, 0, 0)  # nothing was ever written (topic made on first write)
        tps = [TopicPartition(topic, p) for p in sorted(metadata.partitions)]
        ends = {tp.partition: consumer.get_watermark_offsets(tp, timeout=10) for tp in tps}
        pending = {p for p, (low, high) in ends.items() if high > low}
        consumer.assign([TopicPartition(topic, p, -2) for p in sorted(pending)])  # -2: earliest
        rows: dict[str, Any] = {}
        partition_of: dict[str, int] = {}
        unreadable = 0
        deadline = time.monotonic() + timeout_s
        while pending:
            if time.monotonic() > deadline:
                raise TimeoutError(f"reading {topic} took longer than {timeout_s:g} s")
            for message in consumer.consume(1000, timeout=0.2):
                partition, offset = message.partition(), message.offset()
                if message.error() is not None or partition is None or offset is None:
                    continue
                key = (message.key() or b"").decode("utf-8", "replace")
                value = message.value()
                if value is None:
                    rows.pop(key, None)
                    partition_of.pop(key, None)
                else:
                    try:
                        rows[key] = _row(spec, orjson.loads(value))
                    except orjson.JSONDecodeError:
                        unreadable += 1
                        rows[key] = value.decode("utf-8", "replace")
                    partition_of[key] = partition
                if offset + 1 >= ends[partition][1]:
                    pending.discard(partition)
        return Snapshot(rows, partition_of, len(tps), unreadable)
    finally:
        consumer.close()


def _row(spec: TableSpec, value: Any) -> Any:
    """The row a changelog value holds; a record that is no row is shown as it is."""
    row = spec.decode(value) if spec.decode is not None else None
    return value if row is None else row


def scan(
    snapshot: Snapshot,
    spec: TableSpec,
    status: str | None = None,
    priority: str | None = None,
    since: float | None = None,
    limit: int | None = None,
    kind: str | None = None,
) -> list[dict[str, Any]]:
    """Rows matching every given filter, newest first where the table has a time, else by key.
    ``kind`` is an explanation row's (``explanations``: absent means contributions)."""
    out: list[tuple[float, str, Any]] = []
    for key, row in snapshot.rows.items():
        fields = row if isinstance(row, dict) else {}
        if status is not None and fields.get("status") != status:
            continue
        if kind is not None and (spec.name != "explanations" or not fields or kind_of(fields) != kind):
            continue
        if priority is not None and fields.get("priority") != priority:
            continue
        moment = spec.moment(fields) if fields else None
        if since is not None and (moment is None or moment < since):
            continue
        out.append((moment if moment is not None else float("-inf"), key, row))
    out.sort(key=lambda item: (-item[0], item[1]))
    return [{"key": key, "value": row} for _, key, row in out[: limit if limit is not None else len(out)]]


def stats(snapshot: Snapshot, spec: TableSpec) -> dict[str, Any]:
    per_partition = Counter(snapshot.partition_of.values())
    out: dict[str, Any] = {
        "table": spec.name,
        "keys": len(snapshot.rows),
        "partitions": snapshot.partitions,
        "keys_per_partition": {str(p): per_partition.get(p, 0) for p in range(snapshot.partitions)},
        "unreadable_values": snapshot.unreadable,
    }
    if spec.name == "explanations":
        rows = [r for r in snapshot.rows.values() if isinstance(r, dict)]
        out["status"] = dict(Counter(str(r.get("status")) for r in rows))
        out["priority"] = dict(Counter(str(r.get("priority")) for r in rows))
        kinds: dict[str, Counter[str]] = {}
        for r in rows:
            kinds.setdefault(kind_of(r), Counter())[str(r.get("status"))] += 1
        out["kinds"] = {k: dict(counts) for k, counts in sorted(kinds.items())}  # status counts per kind
        # the cache serves contributions only
        complete = [r for r in rows if r.get("status") == "complete" and kind_of(r) == CONTRIBUTIONS]
        hits = sum(1 for r in complete if r.get("cache_hit"))
        out["cache_hits"] = hits
        out["cache_hit_rate"] = round(hits / len(complete), 4) if complete else None
    return out


def since_epoch(text: str) -> float:
    """``--since``: an ISO time (UTC if no zone) or a duration back from now: 90s, 15m, 2h, 1d."""
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if text and text[-1] in units:
        try:
            return time.time() - float(text[:-1]) * units[text[-1]]
        except ValueError:
            pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither an ISO time nor a duration like 15m") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()
