"""Every table's RocksDB store is opened with bounded memory (write buffers, block cache), not
Faust's defaults (3 × 64 MB memtables and a 2 GiB cache per table partition)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from faust.stores.rocksdb import DEFAULT_BLOCK_CACHE_SIZE, DEFAULT_WRITE_BUFFER_SIZE, RocksDBOptions

from app.explainer.explanation_tables import ExplanationTables
from app.explainer.faust_app import create_app
from app.kafka.table_catalogue import store_options
from app.scorer.loop import ScorerTables
from app.settings import Settings

MB = 1024 * 1024


def _tables(tmp_path: Path) -> dict[str, Any]:
    settings = Settings(data_dir=tmp_path)
    scorer = ScorerTables(settings, tmp_path / "scorer")
    explainer = ExplanationTables(create_app(settings), settings)
    return {
        "card_activity": scorer.card_activity,
        "predictions": scorer.predictions,
        "explanations": explainer.explanations,
        "explanation_waiting": explainer.waiting,
    }


def test_every_table_passes_the_bounded_options_to_its_store(tmp_path: Path) -> None:
    for table in _tables(tmp_path).values():
        given = {k: v for k, v in table.options.items() if k not in ("driver", "read_only")}
        options = RocksDBOptions(**given)
        assert options.write_buffer_size == 8 * MB < DEFAULT_WRITE_BUFFER_SIZE, table.name
        assert options.max_write_buffer_number == 2, table.name
        assert options.block_cache_size == 16 * MB < DEFAULT_BLOCK_CACHE_SIZE, table.name
        assert not options.extra_options, table.name  # every key is one RocksDBOptions knows


def test_windowed_tables_keep_their_ttl(tmp_path: Path) -> None:
    tables = _tables(tmp_path)
    day = 86_400  # FRAUDLENS_DEDUP_WINDOW_S and FRAUDLENS_EXPLANATION_RETENTION_S by default
    assert [
        tables[name].options["ttl"] for name in ("predictions", "explanations", "explanation_waiting")
    ] == [day] * 3
    assert "ttl" not in tables["card_activity"].options


def test_the_sizes_come_from_settings_and_reach_rocksdb(tmp_path: Path) -> None:
    settings = Settings(rocksdb_write_buffer_mb=2, rocksdb_block_cache_mb=4)
    options = RocksDBOptions(**store_options(settings))
    assert (options.write_buffer_size, options.block_cache_size) == (2 * MB, 4 * MB)
    db = options.open(tmp_path / "db")  # rocksdict accepts them
    db[b"k"] = b"v"
    assert db[b"k"] == b"v"
    db.close()


def test_fausts_changelog_names_are_the_catalogues(tmp_path: Path) -> None:
    """The explainer's Faust app is named by its group; the changelog names Faust derives from it
    are the ones the catalogue gives ``fraudlens tables`` and the broker's retention."""
    from app.kafka.table_catalogue import EXPLANATION_WAITING, EXPLANATIONS

    settings = Settings(data_dir=tmp_path)
    app = create_app(settings)
    tables = ExplanationTables(app, settings)
    assert app.conf.id == "fraudlens-explainer" == settings.explainer_group
    assert tables.explanations.changelog_topic.get_topic_name() == EXPLANATIONS.changelog(settings)
    assert tables.waiting.changelog_topic.get_topic_name() == EXPLANATION_WAITING.changelog(settings)
    assert EXPLANATION_WAITING.changelog(settings) == "fraudlens-explainer-explanation_waiting-changelog"
