"""A changelog-backed bytes → bytes table held in local RocksDB stores, without Faust.

The scorer's tables (``predictions``, ``card_activity``) use this; the explainer's stay Faust
tables. It keeps Faust's layout so a data dir written by either reads the same:

- one RocksDB per partition at ``<worker_dir>/v1/tables/<name>-<partition>.db``, opened with the
  bounded options of :func:`app.kafka.table_catalogue.store_options` (a TTL for windowed tables);
- the changelog topic ``<app_id>-<name>-changelog``, partition = the source record's partition,
  key and value the raw bytes stored;
- the highest changelog offset the store holds, under Faust's key ``__faust\\0offset__``, so a
  recovery reads only what was written after it (``app.kafka.recovery``).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from app.kafka.table_catalogue import TableSpec, store_options
from app.settings import SharedSettings

OFFSET_KEY = b"__faust\0offset__"


class LocalTable:
    """One table's partition stores in ``<worker_dir>/v1/tables`` (nothing is opened before
    ``open``); its name, changelog and TTL come from the table catalogue."""

    def __init__(self, spec: TableSpec, settings: SharedSettings, worker_dir: Path) -> None:
        self.name = spec.name
        self.changelog_topic = spec.changelog(settings)
        self.changelog_config = spec.changelog_config(settings)
        self.options = store_options(settings, spec.ttl_s(settings))
        self._root = worker_dir / "v1" / "tables"
        self._dbs: dict[int, Any] = {}

    def __repr__(self) -> str:
        return f"LocalTable({self.name!r}, {self._root})"

    def path(self, partition: int) -> Path:
        return self._root / f"{self.name}-{partition}.db"

    def open(self, partition: int) -> Any:
        db = self._dbs.get(partition)
        if db is None:
            from faust.stores.rocksdb import RocksDBOptions

            path = self.path(partition)
            path.parent.mkdir(parents=True, exist_ok=True)
            db = self._dbs[partition] = RocksDBOptions(**self.options).open(path)
        return db

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
