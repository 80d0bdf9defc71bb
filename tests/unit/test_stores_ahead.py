"""Stores ahead of their changelogs are deleted before the explainer's Faust worker opens them."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import faust
import pytest
from faust.types import TP

from app.explainer.stores_ahead import (
    REBUILD_MARK,
    mark_for_rebuild,
    rebuild_marked,
    rebuild_stores_ahead,
    store_files,
)

CHANGELOG = "app-explanations-changelog"


def _faust_store(tabledir: Path, persisted: dict[int, int], ttl: int | None) -> None:
    """Partition stores written by Faust's own RocksDB store (the format under test), each
    saying it holds ``persisted[partition]``."""
    app = faust.App("stores-ahead-test", store="rocksdb://", tabledir=str(tabledir))
    table = app.Table("explanations", key_type=bytes, value_type=bytes, options={"ttl": ttl} if ttl else {})
    store: Any = table.data  # faust.stores.rocksdb.Store
    for partition, offset in persisted.items():
        store.set_persisted_offset(TP(CHANGELOG, partition), offset)
        store._db_for_partition(partition)[b"row"] = b"value"  # a row beside the offset
    for db in list(store._dbs.values()):
        db.close()


@pytest.mark.parametrize("ttl", [None, 60])
def test_only_stores_at_or_past_their_changelog_end_are_deleted(tmp_path: Path, ttl: int | None) -> None:
    # the changelog ends (high watermark, the next offset to write) at 100 on every partition
    _faust_store(tmp_path, {0: 99, 1: 100, 2: 250}, ttl)
    (tmp_path / "explanations-x.db").mkdir()  # not a partition store: left alone
    ends = {0: 100, 1: 100, 2: 100}
    stores = store_files(tmp_path, [("explanations", CHANGELOG, ttl)])
    assert sorted(s.partition for s in stores) == [0, 1, 2]

    deleted = rebuild_stores_ahead(stores, lambda topic, partition: ends[partition])

    assert sorted(s.partition for s in deleted) == [1, 2]
    assert (tmp_path / "explanations-0.db").exists()  # offset 99 < end 100: consistent, kept
    assert not (tmp_path / "explanations-1.db").exists()
    assert not (tmp_path / "explanations-2.db").exists()
    assert (tmp_path / "explanations-x.db").exists()


def test_a_store_without_an_offset_is_kept(tmp_path: Path) -> None:
    import rocksdict

    db = rocksdict.Rdict(str(tmp_path / "explanations-3.db"), options=rocksdict.Options(raw_mode=True))
    db[b"row"] = b"value"
    db.close()
    stores = store_files(tmp_path, [("explanations", CHANGELOG, None)])
    assert rebuild_stores_ahead(stores, lambda topic, partition: 0) == []
    assert (tmp_path / "explanations-3.db").exists()


def test_a_marked_worker_rebuilds_every_store_once(tmp_path: Path) -> None:
    """The sink's mark (the broker handed acked offsets out again) rebuilds stores whose offsets
    look consistent too: new writes may have filled the lost offsets anew."""
    tabledir = tmp_path / "v1" / "tables"
    _faust_store(tabledir, {0: 10, 1: 20}, None)
    mark_for_rebuild(tmp_path, "t-changelog[1] acked at 5 after 20")
    stores = store_files(tabledir, [("explanations", CHANGELOG, None)])

    deleted = rebuild_marked(tmp_path, stores)

    assert sorted(s.partition for s in deleted) == [0, 1]
    assert not list(tabledir.glob("explanations-*.db"))
    assert not (tmp_path / REBUILD_MARK).exists()  # once: the next start keeps the new stores
    _faust_store(tabledir, {0: 3}, None)
    assert rebuild_marked(tmp_path, store_files(tabledir, [("explanations", CHANGELOG, None)])) == []
