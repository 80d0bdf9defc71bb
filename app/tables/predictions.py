"""``predictions``: transaction_id → the verdict sent for it (raw JSON bytes).

Written only by the scoring agent (concurrency 1). A transaction seen again gets this stored
verdict re-sent byte for byte, never a second score.
"""

from __future__ import annotations

from app.app import app
from app.settings import get_settings

# A retry is a retry within a bounded window; without one the table (and its changelog, whose
# keys never repeat) would grow forever.
_window_s = get_settings().dedup_window_s

predictions = app.Table(
    "predictions",
    key_type=bytes,
    value_type=bytes,
    help="transaction_id to the verdict JSON sent for it; makes re-sends idempotent.",
    extra_topic_configs={"cleanup.policy": "compact,delete", "retention.ms": str(int(_window_s * 1000))},
    options={"ttl": int(_window_s)},
)
