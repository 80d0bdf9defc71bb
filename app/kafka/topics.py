"""Every topic name, declared once. Faust topic objects live in :mod:`app.explainer.faust_app`."""

from __future__ import annotations

TRANSACTIONS = "transactions"
TRANSACTIONS_DLQ = "transactions.dlq"
VERDICTS = "verdicts"
EXPLAIN_HIGH = "explain.high"
EXPLAIN_NORMAL = "explain.normal"
EXPLAIN_LOW = "explain.low"
EXPLAIN_REQUESTS = "explain.requests"  # on demand (console, `fraudlens explain TXID`): always high
EXPLAIN_REQUESTS_DLQ = "explain.requests.dlq"  # rejected on-demand requests (DESIGN-NOTES: hostile records)
EXPLANATION_UPDATES = "explanation.updates"

# Work queue of each priority; all keyed by transaction_id, co-partitioned with verdicts.
EXPLAIN_TOPICS = {"high": EXPLAIN_HIGH, "normal": EXPLAIN_NORMAL, "low": EXPLAIN_LOW}

# Topics the embedded broker and the CLI pre-create with the configured partition count, so a
# producer that writes first never auto-creates a one-partition topic.
APP_TOPICS = (
    TRANSACTIONS,
    TRANSACTIONS_DLQ,
    VERDICTS,
    EXPLAIN_HIGH,
    EXPLAIN_NORMAL,
    EXPLAIN_LOW,
    EXPLAIN_REQUESTS,
    EXPLAIN_REQUESTS_DLQ,
    EXPLANATION_UPDATES,
)

# Topics people and their own tools read (docs/operations.md: your own producers and consumers).
# The embedded broker keeps them for its time retention only, however far every consumer group
# has read, so a group that joins later still finds them (issue 23). A new topic users read
# belongs here.
READ_BY_USERS = frozenset({VERDICTS, EXPLANATION_UPDATES, TRANSACTIONS_DLQ, EXPLAIN_REQUESTS_DLQ})
