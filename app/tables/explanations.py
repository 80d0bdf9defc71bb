"""``explanations``: transaction_id → the explanation's state (JSON, see ``app.explain.state``).

Partitioned like ``verdicts`` and the ``explain.*`` topics (all keyed by transaction_id with the
same partition count), so the worker that routes a verdict also owns its row and its requests.
Written by the explainer's router (new rows) and its compute task (status changes), both on
the one event loop of that worker. Rows expire with the retention window: a transaction
re-sent later than that gets a fresh explanation.
"""

from __future__ import annotations

from app.settings import get_settings
from app.tables import windowed_table

_retention_s = get_settings().explanation_retention_s

explanations = windowed_table(
    "explanations",
    "transaction_id to its explanation state: status, priority, model version, attempts, "
    "the explanation, timings (verdict, queued, started, completed).",
    _retention_s,
)
