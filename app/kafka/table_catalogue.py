"""Every changelog-backed table: its name, owner role, help and changelog policy, in one place.

The scorer opens its tables as :class:`app.kafka.local_table.LocalTable` stores, the explainer
as Faust tables (``app.explainer.explanation_tables``), ``fraudlens tables`` reads them from
their changelogs (``app.ops.table_scan``): all three take the name, the changelog topic, its
configs and the store's TTL from here.

A table whose keys never repeat (transaction ids) has a *window*: compaction alone would not
bound its changelog, so the changelog is ``compact,delete`` with the window as retention, and
the store expires rows with the same TTL. ``explanations`` has no changelog of its own: its rows'
records are the ``explanation.updates`` topic (DESIGN-NOTES: records per transaction), whose
configs ``app.kafka.topics`` owns.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from app.kafka import topics
from app.settings import SharedSettings

Role = Literal["scorer", "explainer"]


@dataclass(frozen=True)
class TableSpec:
    name: str
    role: Role
    summary: str  # one line, for ``fraudlens tables list``
    help: str  # the table's full help (Faust's table help)
    window: Callable[[SharedSettings], float] | None = None  # rows live this long (seconds); None: for ever
    output_topic: str | None = None  # the changelog is this output topic (its configs are the topic's)

    def app_id(self, settings: SharedSettings) -> str:
        """The Faust app id (consumer group) of the owner role: it prefixes the changelog topic."""
        return settings.app_id if self.role == "scorer" else settings.explainer_group

    def changelog(self, settings: SharedSettings) -> str:
        return self.output_topic or f"{self.app_id(settings)}-{self.name}-changelog"

    def ttl_s(self, settings: SharedSettings) -> int | None:
        return None if self.window is None else int(self.window(settings))

    def changelog_config(self, settings: SharedSettings) -> dict[str, str]:
        """Configs of the changelog topic the owner creates (none for an output topic)."""
        if self.output_topic is not None:
            return {}
        if self.window is None:
            return {"cleanup.policy": "compact"}  # latest value per key
        return {"cleanup.policy": "compact,delete", "retention.ms": str(int(self.window(settings) * 1000))}


PREDICTIONS = TableSpec(
    "predictions",
    "scorer",
    "transaction_id → the verdict sent for it",
    "transaction_id to the verdict JSON sent for it; makes re-sends idempotent.",
    # A retry is a retry within a bounded window; without one the table would grow for ever.
    window=lambda settings: settings.dedup_window_s,
)
CARD_ACTIVITY = TableSpec(
    "card_activity",
    "scorer",
    "card_id → recent-activity state (velocity features)",
    "card_id to its recent-activity state (JSON) used for velocity features.",
)
EXPLANATIONS = TableSpec(
    "explanations",
    "explainer",
    "transaction_id → explanation status, priority, timings, result",
    "transaction_id to its explanation state, as its latest explanation.updates record: status, "
    "priority, model version, attempts, the explanation, timings, plus its source and request.",
    window=lambda settings: settings.explanation_retention_s,
    output_topic=topics.EXPLANATION_UPDATES,
)
EXPLANATION_WAITING = TableSpec(
    "explanation_waiting",
    "explainer",
    "transaction_id → a row never published: sampled_out, or requested before its verdict",
    "transaction_id to a row never published: sampled_out (left out by sampling, explained on "
    "demand) or requested (asked for before its verdict came).",
    window=lambda settings: settings.explanation_retention_s,
)

TABLES: dict[str, TableSpec] = {
    spec.name: spec for spec in (PREDICTIONS, CARD_ACTIVITY, EXPLANATIONS, EXPLANATION_WAITING)
}


def store_options(settings: SharedSettings, ttl_s: int | None = None) -> dict[str, Any]:
    """RocksDB options of a table partition's store: bounded memory (see SharedSettings), a TTL for a
    windowed table. The same dict is a Faust table's ``options``."""
    mb = 1024 * 1024
    options: dict[str, Any] = {
        "write_buffer_size": settings.rocksdb_write_buffer_mb * mb,
        "max_write_buffer_number": 2,
        "block_cache_size": settings.rocksdb_block_cache_mb * mb,
        "block_cache_compressed_size": 0,  # python-rocksdb only; rocksdict has none
    }
    if ttl_s is not None:
        options["ttl"] = ttl_s
    return options
