"""``card_activity``: card_id → bounded velocity state (JSON), the model's per-card features.

Written only by the scoring agent (concurrency 1). The state remembers the ids of the
transactions applied to it, so a replay after a crash never counts a transaction twice.
"""

from __future__ import annotations

from app.app import app
from app.tables import store_options

card_activity = app.Table(
    "card_activity",
    key_type=bytes,
    value_type=bytes,
    help="card_id to its recent-activity state (JSON) used for velocity features.",
    options=store_options(),
)
