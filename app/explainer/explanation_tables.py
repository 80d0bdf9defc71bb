"""``explanations``: transaction_id → the explanation's state, stored as its latest
``explanation.updates`` record (``app.explain.state.to_record``).

The table's changelog *is* the ``explanation.updates`` topic (Kafka Streams' table whose
changelog is its output topic): each status change is one record, both the table write and the
published update, where a changelog of its own cost a second record per status (issue 18,
DESIGN-NOTES: records per transaction). Recovery replays that topic, latest record per key. The
topic is on time retention only (users read it: ``app.kafka.topics.READ_BY_USERS``), not compacted: a
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

from typing import Any

import faust

from app.kafka.table_catalogue import EXPLANATION_WAITING, EXPLANATIONS, TableSpec, store_options
from app.settings import ExplainerSettings


class ExplanationTables:
    """The explainer's two Faust tables, declared on its app (``build``)."""

    def __init__(self, app: faust.App, settings: ExplainerSettings) -> None:
        self.explanations = app.Table(
            EXPLANATIONS.name,
            key_type=bytes,
            value_type=bytes,
            help=EXPLANATIONS.help,
            changelog_topic=app.topic(
                EXPLANATIONS.changelog(settings),
                key_type=bytes,
                value_type=bytes,
                key_serializer="raw",
                value_serializer="raw",
            ),
            options=store_options(settings, EXPLANATIONS.ttl_s(settings)),
        )
        self.waiting = _table(app, EXPLANATION_WAITING, settings)


def _table(app: faust.App, spec: TableSpec, settings: ExplainerSettings) -> Any:
    """A bytes → bytes table with the catalogue's changelog configs and store TTL."""
    return app.Table(
        spec.name,
        key_type=bytes,
        value_type=bytes,
        help=spec.help,
        extra_topic_configs=spec.changelog_config(settings),
        options=store_options(settings, spec.ttl_s(settings)),
    )
