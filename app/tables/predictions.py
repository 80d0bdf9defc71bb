"""``predictions``: transaction_id → the verdict sent for it (raw JSON bytes).

Written only by the scorer (one loop per process). A transaction seen again gets this stored
verdict re-sent byte for byte, never a second score.
"""

from __future__ import annotations

from app.settings import get_settings
from app.tables.local import LocalTable

# A retry is a retry within a bounded window; without one the table (and its changelog, whose
# keys never repeat, so compaction alone would not bound it) would grow forever: the changelog
# is compact,delete with the window as retention, and the store expires rows with the same TTL.
_window_s = get_settings().dedup_window_s

predictions = LocalTable(
    "predictions",
    "transaction_id to the verdict JSON sent for it; makes re-sends idempotent.",
    topic_config={"cleanup.policy": "compact,delete", "retention.ms": str(int(_window_s * 1000))},
    ttl_s=int(_window_s),
)
