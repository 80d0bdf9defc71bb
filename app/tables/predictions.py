"""``predictions``: transaction_id → the verdict sent for it (raw JSON bytes).

Written only by the scoring agent (concurrency 1). A transaction seen again gets this stored
verdict re-sent byte for byte, never a second score.
"""

from __future__ import annotations

from app.app import app

predictions = app.Table(
    "predictions",
    key_type=bytes,
    value_type=bytes,
    help="transaction_id to the verdict JSON sent for it; makes re-sends idempotent.",
)
