"""An in-memory stand-in for a partitioned table (``app.kafka.local_table.LocalTable``)."""

from __future__ import annotations


class MemoryTable(dict[bytes, bytes]):
    """Rows by key, the same whatever the partition: what ``BatchScorer`` reads
    (``get(partition, key)``); the test writes and inspects it as a dict."""

    def get(self, partition: int, key: bytes, /) -> bytes | None:  # type: ignore[override]
        return super().get(key)
