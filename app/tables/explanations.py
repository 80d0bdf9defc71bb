"""``explanations``: transaction_id → the explanation's state, stored as its latest
``explanation.updates`` record (``app.explain.state.to_record``).

The table's changelog *is* the ``explanation.updates`` topic (Kafka Streams' table whose
changelog is its output topic): each status change is one record, both the table write and the
published update, where a changelog of its own cost a second record per status (issue 18,
DESIGN-NOTES: records per transaction). Recovery replays that topic, latest record per key. The
topic is on time retention only (users read it: ``app.topics.READ_BY_USERS``), not compacted: a
rebuilt store reads every status of the retained transactions, and remembers a transaction (its
dedup) only as long as the topic keeps it, so production sets the topic's ``retention.ms`` at
least ``FRAUDLENS_EXPLANATION_RETENTION_S``.

Partitioned like ``verdicts`` and the ``explain.*`` topics (all keyed by transaction_id with the
same partition count), so the worker that routes a verdict also owns its row and its requests.
Written by the explainer's router (new rows) and its compute task (status changes), both on
the one event loop of that worker. Rows expire with the retention window: a transaction
re-sent later than that gets a fresh explanation.

``explanation_waiting``: transaction_id → a row of a status that is never published
(``sampled_out``, ``requested``: ``app.explain.state``), in the internal row shape, with a
changelog of its own (compact,delete over the retention window). It is written only for a low
verdict sampling leaves out or an on-demand request that beats its verdict; ``explanations``
wins when a transaction has a row in both.
"""

from __future__ import annotations

from app import topics
from app.app import app
from app.settings import get_settings
from app.tables import store_options, windowed_table

_retention_s = get_settings().explanation_retention_s

explanations = app.Table(
    "explanations",
    key_type=bytes,
    value_type=bytes,
    help="transaction_id to its explanation state, as its latest explanation.updates record: status, "
    "priority, model version, attempts, the explanation, timings, plus its source and request.",
    changelog_topic=app.topic(
        topics.EXPLANATION_UPDATES,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
    ),
    options=store_options(ttl=int(_retention_s)),
)

explanation_waiting = windowed_table(
    "explanation_waiting",
    "transaction_id to a row never published: sampled_out (left out by sampling, explained on "
    "demand) or requested (asked for before its verdict came).",
    _retention_s,
)
