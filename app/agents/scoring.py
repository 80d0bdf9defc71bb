"""The scoring agent: transactions → verdicts, micro-batched. The critical path.

Order of effects per batch: predictions rows and card states are written and flushed (acked by
the broker) before any verdict of the batch is sent. A worker killed mid-batch can therefore
have persisted a prediction without its verdict (the replay re-sends the stored verdict) but
never a verdict without its prediction (the replay would score again, with new timestamps). The
producer batches per partition with a linger, so without the flush a verdict's batch could
leave before its prediction's. Offsets are committed only after a producer flush (Faust), so a
sent verdict is never skipped on replay either.
"""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, cast

from faust.types import EventT, StreamT

from app.agents.batching import micro_batches
from app.app import app, dlq_topic, transactions_topic, verdicts_topic
from app.model.registry import Registry
from app.model.scorer import ModelScorer
from app.scoring import BatchResult, BatchScorer, Incoming
from app.settings import get_settings
from app.tables.card_activity import card_activity
from app.tables.predictions import predictions

log = logging.getLogger(__name__)
settings = get_settings()


def load_model() -> ModelScorer:
    version = settings.model_version or Registry(settings.models_dir).current()
    if version is None:
        raise SystemExit(f"no model registered in {settings.models_dir}: run `fraudlens train` first")
    return ModelScorer(settings.models_dir, version)


def _incoming(event: EventT) -> Incoming:
    message = event.message
    return Incoming(message.key, message.value, message.topic, message.partition, message.offset)


def focus(stream: StreamT, event: EventT) -> None:
    """Make ``event`` the current one: Faust picks a table's partition store from it."""
    cast(Any, stream)._set_current_event(event)


async def apply(stream: StreamT, events: Sequence[EventT], result: BatchResult) -> None:
    """Table writes (each under its own event, so the changelog partition is right), then sends."""
    for index, txid, verdict in result.predictions:
        focus(stream, events[index])
        predictions[txid] = verdict
    for card, (index, state) in result.card_states.items():
        focus(stream, events[index])
        card_activity[card] = state
    if result.predictions or result.card_states:
        await app.producer.flush()
    for txid, verdict in result.verdicts:
        verdicts_topic.send_soon(key=txid, value=verdict)
    for key, record in result.dlq:
        dlq_topic.send_soon(key=key, value=record)


@app.agent(transactions_topic, concurrency=1)
async def score(stream: StreamT) -> AsyncIterator[Any]:
    scorer = BatchScorer(load_model(), predictions, card_activity, settings.max_message_bytes, time.time)
    log.info("scoring with model %s", scorer.model.version)
    async for events in micro_batches(stream, settings.scorer_batch_max, settings.scorer_batch_within_s):
        result = scorer.score(
            [_incoming(event) for event in events],
            focus=lambda index: focus(stream, events[index]),  # noqa: B023
        )
        await apply(stream, events, result)
        yield len(events)
