"""Changelog-backed tables, one module each."""

from __future__ import annotations

from typing import Any

from app.settings import Settings, get_settings


def store_options(settings: Settings | None = None, **extra: Any) -> dict[str, Any]:
    """RocksDB options for a table's store: bounded memory per partition (see Settings)."""
    settings = settings or get_settings()
    mb = 1024 * 1024
    return {
        "write_buffer_size": settings.rocksdb_write_buffer_mb * mb,
        "max_write_buffer_number": 2,
        "block_cache_size": settings.rocksdb_block_cache_mb * mb,
        "block_cache_compressed_size": 0,  # python-rocksdb only; rocksdict has none
        **extra,
    }


def windowed_table(name: str, help: str, window_s: float) -> Any:
    """A bytes → bytes table whose rows (and changelog records) live ``window_s`` seconds.

    Its keys never repeat (transaction ids, signatures), so compaction alone would not bound the
    changelog: it is ``compact,delete`` with the window as retention, and the store expires rows
    with the same TTL.
    """
    from app.app import app

    return app.Table(
        name,
        key_type=bytes,
        value_type=bytes,
        help=help,
        extra_topic_configs={"cleanup.policy": "compact,delete", "retention.ms": str(int(window_s * 1000))},
        options=store_options(ttl=int(window_s)),
    )
