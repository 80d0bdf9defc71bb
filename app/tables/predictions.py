"""``predictions``: transaction_id → the verdict sent for it (raw JSON bytes).

Written only by the scoring agent (concurrency 1). A transaction seen again gets this stored
verdict re-sent byte for byte, never a second score.
"""

from __future__ import annotations

from app.settings import get_settings
from app.tables import windowed_table

# A retry is a retry within a bounded window; without one the table (and its changelog, whose
# keys never repeat) would grow forever.
_window_s = get_settings().dedup_window_s

predictions = windowed_table(
    "predictions",
    "transaction_id to the verdict JSON sent for it; makes re-sends idempotent.",
    _window_s,
)
