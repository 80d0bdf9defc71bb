"""Changelog-backed tables, one module each."""

from __future__ import annotations

from typing import Any


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
        options={"ttl": int(window_s)},
    )
