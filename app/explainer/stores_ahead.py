"""Local stores ahead of their changelogs: rebuilt from the changelog before Faust opens them.

A Faust table's RocksDB store remembers the offset of the last changelog record the broker
acked for it (``__faust\\0offset__``). A broker that loses acked writes (the embedded one when
its noida-db is SIGKILLed: docs/limits.md; Kafka after an unclean leader election) comes back
with a changelog that ends *below* that offset. The store then holds rows whose records are gone,
and so are the records they caused downstream: an ``explanations`` row says ``pending`` or
``complete`` while the request or the update that went with it was lost. Kept, such a row makes
the router drop the verdict re-sent for it as a duplicate, and the explanation never comes.

So the explainer treats its store as what it is, a cache of the changelog: a partition whose
store is ahead is deleted before the worker starts and Faust's recovery rebuilds it from the
changelog, consistent with the offsets the broker kept (Kafka Streams wipes a corrupted task's
store the same way). A live worker that meets an ahead store at a rebalance stops on Faust's own
consistency check and is restarted (``fraudlens up``, systemd), which lands here.

The offsets alone miss one case: a worker that rode through the broker's restart and wrote again
before it noticed fills the lost offsets anew, and its stores' offsets look consistent. Its sink
notices instead (an ack at an offset acked before: ``app.kafka.sink``), leaves a mark in the
worker's directory and stops the worker; at the next start every store of a marked worker is
rebuilt from the changelogs.
"""

from __future__ import annotations

import logging
import shutil
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

OFFSET_KEY = b"__faust\x00offset__"  # faust.stores.rocksdb.Store.offset_key
REBUILD_MARK = "rebuild-stores"  # in the worker's directory: why its stores can't be trusted


@dataclass(frozen=True)
class StoreFile:
    """One partition's RocksDB directory of a table, and the changelog partition it caches."""

    table: str
    partition: int
    path: Path
    changelog: str
    ttl_s: int | None


def store_files(tabledir: Path, tables: Iterable[tuple[str, str, int | None]]) -> list[StoreFile]:
    """The partition stores present on disk for ``(table name, changelog topic, ttl)`` triples
    (Faust names them ``<tabledir>/<table>-<partition>.db``)."""
    found = []
    for name, changelog, ttl_s in tables:
        for path in sorted(tabledir.glob(f"{name}-*.db")):
            suffix = path.name[len(name) + 1 : -len(".db")]
            if suffix.isdigit():
                found.append(StoreFile(name, int(suffix), path, changelog, ttl_s))
    return found


def persisted_offset(store: StoreFile) -> int | None:
    """The changelog offset the store says it holds, read as Faust's store writes it (a TTL
    store is opened with its TTL: its values carry a timestamp suffix otherwise)."""
    import rocksdict

    access = rocksdict.AccessType.with_ttl(store.ttl_s) if store.ttl_s else rocksdict.AccessType.read_write()
    db = rocksdict.Rdict(str(store.path), access_type=access, options=rocksdict.Options(raw_mode=True))
    try:
        raw = db.get(OFFSET_KEY)
    finally:
        db.close()
    return None if raw is None else int(raw)


def rebuild_stores_ahead(
    stores: Iterable[StoreFile], changelog_end: Callable[[str, int], int]
) -> list[StoreFile]:
    """Delete every store whose persisted offset is at or past its changelog partition's end
    (``changelog_end(topic, partition)``: the high watermark); returns the ones deleted."""
    deleted = []
    for store in stores:
        held = persisted_offset(store)
        if held is None:
            continue
        end = changelog_end(store.changelog, store.partition)
        if held >= end:
            log.warning(
                "table %s partition %d: the local store holds changelog offset %d but %s[%d] ends "
                "at %d (the broker lost acked writes); rebuilding the store from the changelog",
                store.table, store.partition, held, store.changelog, store.partition, end,
            )  # fmt: skip
            shutil.rmtree(store.path)
            deleted.append(store)
    return deleted


def rebuild_faust_stores_ahead(app: Any, worker_dir: Path, client_config: dict[str, Any]) -> list[StoreFile]:
    """``rebuild_marked``, then ``rebuild_stores_ahead``, for the tables of a Faust ``app`` not
    started yet."""
    from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

    GONE = {KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION, KafkaError._UNKNOWN_TOPIC}

    tables = [
        (table.name, table.changelog_topic.get_topic_name(), (table.options or {}).get("ttl"))
        for table in app.tables.values()
    ]
    stores = store_files(Path(app.conf.tabledir), tables)
    marked = rebuild_marked(worker_dir, stores)
    stores = [store for store in stores if store not in marked]
    if not stores:
        return marked
    group = f"fraudlens-stores-{uuid.uuid4().hex[:8]}"
    consumer = Consumer({**client_config, "group.id": group, "log_level": 2})

    def changelog_end(topic: str, partition: int) -> int:
        try:
            return int(consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=30)[1])
        except KafkaException as exc:
            if exc.args and exc.args[0].code() in GONE:  # the broker lost the topic: it ends at 0
                return 0
            raise

    try:
        return rebuild_stores_ahead(stores, changelog_end)
    finally:
        consumer.close()


def mark_for_rebuild(worker_dir: Path, why: str) -> None:
    """Leave the mark that makes the next start rebuild every store of this worker (called from
    a delivery report: one small write, no logging framework assumptions)."""
    worker_dir.mkdir(parents=True, exist_ok=True)
    (worker_dir / REBUILD_MARK).write_text(why + "\n")


def rebuild_marked(worker_dir: Path, stores: Iterable[StoreFile]) -> list[StoreFile]:
    """Delete every store if the worker was marked for a rebuild, then the mark; returns them."""
    mark = worker_dir / REBUILD_MARK
    if not mark.exists():
        return []
    why = mark.read_text(errors="replace").strip()
    deleted = [store for store in stores if store.path.exists()]
    log.warning(
        "rebuilding %d table stores from their changelogs: the broker lost acked writes (%s)",
        len(deleted), why,
    )  # fmt: skip
    for store in deleted:
        shutil.rmtree(store.path)
    mark.unlink()
    return deleted
