"""A changelog-backed bytes → bytes table held in local RocksDB stores, without Faust.

The scorer's tables (``predictions``, ``card_activity``) use this; the explainer's stay Faust
tables. It keeps Faust's layout so a data dir written by either reads the same:

- one RocksDB per partition at ``<worker_dir>/v1/tables/<name>-<partition>.db``, opened with the
  bounded options of :func:`app.tables.store_options` (a TTL for windowed tables);
- the changelog topic ``<app_id>-<name>-changelog``, partition = the source record's partition,
  key and value the raw bytes stored;
- the highest changelog offset the store holds, under Faust's key ``__faust\\0offset__``, so a
  recovery reads only what was written after it (``app.agents.recovery``).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

OFFSET_KEY = b"__faust\0offset__"


@dataclass
class LocalTable:
    name: str
    help: str
    topic_config: dict[str, str] = field(default_factory=dict)
    ttl_s: int | None = None
    _dbs: dict[int, Any] = field(default_factory=dict, repr=False)
    _root: Path | None = field(default=None, repr=False)

    def changelog_topic(self, app_id: str) -> str:
        return f"{app_id}-{self.name}-changelog"

    def changelog_config(self) -> dict[str, str]:
        """Topic configs of the changelog: compacted (latest value per key), plus the table's own."""
        return {"cleanup.policy": "compact", **self.topic_config}

    def bind(self, worker_dir: Path) -> None:
        """Where this process keeps the table's stores (before any partition is opened)."""
        self._root = worker_dir / "v1" / "tables"

    def path(self, partition: int) -> Path:
        if self._root is None:
            raise RuntimeError(f"table {self.name} has no data dir: call bind() first")
        return self._root / f"{self.name}-{partition}.db"

    def open(self, partition: int) -> Any:
        db = self._dbs.get(partition)
        if db is None:
            from faust.stores.rocksdb import RocksDBOptions

            path = self.path(partition)
            path.parent.mkdir(parents=True, exist_ok=True)
            db = self._dbs[partition] = RocksDBOptions(**self.options).open(path)
        return db

    @property
    def options(self) -> dict[str, Any]:
        """The store's RocksDB options, as a Faust table's ``options`` (bounded memory, TTL)."""
        from app.tables import store_options

        return store_options() if self.ttl_s is None else store_options(ttl=self.ttl_s)

    def close(self, partitions: Iterable[int] | None = None) -> None:
        for partition in list(self._dbs) if partitions is None else list(partitions):
            db = self._dbs.pop(partition, None)
            if db is not None:
                db.close()

    def held(self) -> set[int]:
        return set(self._dbs)

    def get(self, partition: int, key: bytes) -> bytes | None:
        value = self.open(partition).get(key)
        return None if value is None else bytes(value)

    def put(self, partition: int, key: bytes, value: bytes) -> None:
        self.open(partition)[key] = value

    def persisted_offset(self, partition: int) -> int | None:
        raw = self.open(partition).get(OFFSET_KEY)
        return None if raw is None else int(raw)

    def set_persisted_offset(self, partition: int, offset: int) -> None:
        self.open(partition)[OFFSET_KEY] = str(offset).encode()

    def apply_changelog(
        self, partition: int, records: Iterable[tuple[bytes, bytes | None]], offset: int
    ) -> None:
        """Write changelog records (None deletes) and remember ``offset`` as the store's position."""
        from rocksdict import WriteBatch

        batch = WriteBatch(raw_mode=True)
        for key, value in records:
            if value is None:
                batch.delete(key)
            else:
                batch.put(key, value)
        batch.put(OFFSET_KEY, str(offset).encode())
        self.open(partition).write(batch)

    def wipe(self, partition: int) -> None:
        """Remove a partition's local store (the changelog stays)."""
        self.close([partition])
        shutil.rmtree(self.path(partition), ignore_errors=True)


class PartitionView:
    """``table.get(key)`` on the partition in focus: what :class:`app.scoring.BatchScorer` reads."""

    def __init__(self, table: LocalTable) -> None:
        self.table = table
        self.partition = 0

    def get(self, key: bytes, default: bytes | None = None) -> bytes | None:
        value = self.table.get(self.partition, key)
        return default if value is None else value

    def __getitem__(self, key: bytes) -> bytes:
        value = self.get(key)
        if value is None:
            raise KeyError(key)
        return value

    def __setitem__(self, key: bytes, value: bytes) -> None:
        self.table.put(self.partition, key, value)

    def __contains__(self, key: object) -> bool:
        return isinstance(key, bytes) and self.get(key) is not None
