"""Every topic name, declared once. Faust topic objects live in :mod:`app.app`."""

from __future__ import annotations

TRANSACTIONS = "transactions"
TRANSACTIONS_DLQ = "transactions.dlq"
VERDICTS = "verdicts"

# Topics the embedded broker and the CLI pre-create with the configured partition count, so a
# producer that writes first never auto-creates a one-partition topic.
APP_TOPICS = (TRANSACTIONS, TRANSACTIONS_DLQ, VERDICTS)
