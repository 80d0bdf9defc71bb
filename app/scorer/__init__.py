"""The scorer role: a librdkafka loop from transactions to verdicts, the critical path.

``build(settings)`` is its composition root: the tables, the model, the batch scorer, the sink
and the loop, created in that order from the settings it is given; ``run(settings)`` builds
and runs it until SIGTERM/SIGINT. Nothing is created at import (``app.scorer.loop`` defines).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.scorer.loop import ScorerLoop
    from app.settings import ScorerSettings

log = logging.getLogger(__name__)


def build(settings: ScorerSettings) -> ScorerLoop:
    """The scorer's parts, wired: its tables' changelogs exist, nothing is consumed yet."""
    import time

    from app.kafka.outage import Outage
    from app.kafka.sink import Sink
    from app.model.batch import BatchScorer
    from app.model.registry import Registry
    from app.records.validation import compile_transaction_schema
    from app.scorer.loop import (
        ModelWatcher,
        ScorerLoop,
        ScorerTables,
        ensure_changelogs,
        inline_explainer,
        load_model,
        outage_aware_producer,
    )

    compile_transaction_schema()  # a bad schema dir stops the scorer at start, not at a batch
    outage = Outage("scorer", log)  # its on_fatal is the loop's (ScorerLoop._failed_for_good)
    tables = ScorerTables(settings, settings.worker_dir)
    ensure_changelogs(settings, tables)
    model = load_model(settings)
    scorer = BatchScorer(
        model, tables.predictions, tables.card_activity, settings.max_message_bytes, time.time,
        settings.dlq_value_prefix_bytes, settings.dlq_key_prefix_bytes,
    )  # fmt: skip
    watcher = ModelWatcher(
        Registry(settings.models_dir), settings.model_version is not None, settings.model_check_interval_s
    )
    return ScorerLoop(
        settings,
        scorer,
        Sink(
            settings,
            outage_aware_producer(outage),
            settings.scorer_linger_ms,
            client_id=f"{settings.app_id}-scorer-sink",
        ),
        tables,
        inline=inline_explainer(settings),
        watcher=watcher,
        outage=outage,
    )


def run(settings: ScorerSettings) -> int:
    """``fraudlens worker --role scorer``: score until SIGTERM/SIGINT, then leave the group."""
    import signal
    import threading

    from app.runtime import metrics

    loop = build(settings)
    model = loop.scorer.model
    metrics.set_model(model.version)
    stop_metrics = metrics.serve_in_thread(settings)
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info(
        "scoring with model %s (group %s, state in %s)", model.version, settings.app_id, settings.worker_dir
    )
    try:
        loop.run(stop)
    finally:
        stop_metrics()
    log.info("scorer stopped")
    return 0
