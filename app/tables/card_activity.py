"""``card_activity``: card_id → bounded velocity state (JSON), the model's per-card features.

Written only by the scorer (one loop per process). The state remembers the ids of the
transactions applied to it, so a replay after a crash never counts a transaction twice.
"""

from __future__ import annotations

from app.tables.local import LocalTable

card_activity = LocalTable(
    "card_activity",
    "card_id to its recent-activity state (JSON) used for velocity features.",
)
