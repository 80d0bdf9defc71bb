"""The scoring agent: transactions → verdicts, micro-batched. The critical path.

Order of effects per batch: predictions rows and card states are written and flushed (acked by
the broker) before any verdict of the batch is sent. A worker killed mid-batch can therefore
have persisted a prediction without its verdict (the replay re-sends the stored verdict) but
never a verdict without its prediction (the replay would score again, with new timestamps). The
producer batches per partition with a linger, so without the flush a verdict's batch could
leave before its prediction's. A batch's events are acked (and so may be committed) only after
its verdicts and DLQ records were acked by the broker, so a verdict is never skipped on replay.
All writes go through :mod:`app.agents.sink` (librdkafka), not Faust's producer: see there why.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any, NoReturn, cast

from faust.types import TP, EventT, StreamT

from app import metrics, topics
from app.agents.batching import micro_batches
from app.agents.sink import DeliveryFailed, Sink
from app.app import app, transactions_topic
from app.explain.inline import InlineExplainer
from app.model.registry import Registry
from app.model.scorer import ModelScorer
from app.scoring import BatchResult, BatchScorer, Incoming
from app.settings import get_settings
from app.tables.card_activity import card_activity
from app.tables.predictions import predictions

log = logging.getLogger(__name__)
_TABLES: dict[str, Any] = {}  # changelog topic -> table
settings = get_settings()


def load_model() -> ModelScorer:
    version = settings.model_version or Registry(settings.models_dir).current()
    if version is None:
        raise SystemExit(f"no model registered in {settings.models_dir}: run `fraudlens train` first")
    return ModelScorer(settings.models_dir, version)


class ModelWatcher:
    """Follows the registry's CURRENT pointer (``fraudlens models promote``) unless pinned.

    Checked between batches, at most every ``interval_s``: a batch is scored by one version,
    and the verdict names it. A version that cannot be loaded is logged and the old one kept.
    """

    def __init__(self, registry: Registry, pinned: bool, interval_s: float, clock: Any = time.monotonic):
        self.registry, self.pinned, self.interval_s, self.clock = registry, pinned, interval_s, clock
        self.checked = clock()
        self.refused: str | None = None

    def newer(self, current: ModelScorer) -> ModelScorer | None:
        if self.pinned or self.clock() - self.checked < self.interval_s:
            return None
        self.checked = self.clock()
        wanted = None
        try:
            wanted = self.registry.current()
            if wanted is None or wanted == current.version or wanted == self.refused:
                return None
            model = ModelScorer(self.registry.root, wanted)
        except Exception as exc:  # a bad promotion (any load error) must not stop scoring
            log.error("model %s cannot be loaded, still scoring with %s: %s", wanted, current.version, exc)
            self.refused = wanted
            return None
        log.info("model %s promoted: scoring with it from now on (was %s)", wanted, current.version)
        return model


def _incoming(event: EventT) -> Incoming:
    message = event.message
    return Incoming(message.key, message.value, message.topic, message.partition, message.offset)


def focus(stream: StreamT, event: EventT) -> None:
    """Make ``event`` the current one: Faust picks a table's partition store from it."""
    cast(Any, stream)._set_current_event(event)


async def apply(stream: StreamT, events: Sequence[EventT], result: BatchResult, sink: Sink) -> None:
    """Table rows (store + changelog, each under its own event: the partition is the event's),
    acked by the broker before any verdict or DLQ record of the batch is queued. The verdicts'
    own acks are awaited by ``acknowledge``, while the next batch is scored."""
    for index, txid, verdict in result.predictions:
        _write(stream, events[index], predictions, txid, verdict, sink)
    for card, (index, state) in result.card_states.items():
        _write(stream, events[index], card_activity, card, state, sink)
    if result.predictions or result.card_states:
        _persisted(await sink.flush())
    for txid, verdict in result.verdicts:
        sink.produce(topics.VERDICTS, txid, verdict)
    for key, record in result.dlq:
        sink.produce(topics.TRANSACTIONS_DLQ, key, record)


async def acknowledge(
    stream: StreamT, events: Sequence[EventT], sink: Sink, result: BatchResult, received: float
) -> None:
    """Ack the batch's events (so Faust may commit past them) once all its records are acked."""
    try:
        _persisted(await sink.flush())
    except DeliveryFailed as exc:
        _give_up(exc)
    for event in events:
        await stream.ack(event)
    latency = time.perf_counter() - received
    for _ in result.verdicts:
        metrics.VERDICT_LATENCY.observe(latency)
    for decision, count in result.decisions.items():
        metrics.VERDICTS.labels(decision=decision).inc(count)
    for reason, count in result.rejected.items():
        metrics.DLQ_RECORDS.labels(reason=reason).inc(count)


def _persisted(highest: dict[tuple[str, int], int]) -> None:
    """What Faust's ``_on_changelog_sent`` records: the store holds the changelog up to here."""
    for (topic, partition), offset in highest.items():
        _TABLES[topic].data.set_persisted_offset(TP(topic, partition), offset)


def _give_up(exc: Exception) -> NoReturn:
    # The batch's events stay unacked; a restarted worker replays them from the last commit.
    # Carrying on would ack events whose records the broker never took.
    log.critical("the broker did not take this batch's records (%s): stopping the worker", exc)
    logging.shutdown()
    os._exit(75)


def _write(stream: StreamT, event: EventT, table: Any, key: bytes, value: bytes, sink: Sink) -> None:
    """What ``table[key] = value`` does, with the changelog record sent through the sink."""
    focus(stream, event)
    table.data[key] = value
    sink.changelog(table.changelog_topic_name, event.message.partition, key, value)


@app.agent(transactions_topic, concurrency=1)
async def score(stream: StreamT) -> AsyncIterator[Any]:
    scorer = BatchScorer(load_model(), predictions, card_activity, settings.max_message_bytes, time.time)
    log.info("scoring with model %s", scorer.model.version)
    metrics.set_model(scorer.model.version)
    metrics_server = await metrics.start_metrics_server(settings)
    watcher = ModelWatcher(
        Registry(settings.models_dir), settings.model_version is not None, settings.model_check_interval_s
    )
    stats = _BatchStats()
    sink = Sink(settings)
    _TABLES.update({cast(Any, t).changelog_topic_name: t for t in (predictions, card_activity)})
    acking: asyncio.Task[None] | None = None
    inline = _inline_explainer()
    try:
        async for events in micro_batches(
            stream, settings.scorer_batch_max, settings.scorer_batch_within_s, ack=False
        ):
            newer = watcher.newer(scorer.model)
            if newer is not None:
                scorer.model = newer
                metrics.set_model(newer.version)
            started = time.perf_counter()
            result = scorer.score(
                [_incoming(event) for event in events],
                focus=lambda index: focus(stream, events[index]),  # noqa: B023
            )
            if inline is not None:  # benchmarks only: the synchronous design (bench.sync)
                inline.explain(result.verdicts)
            scored = time.perf_counter()
            try:
                await apply(stream, events, result, sink)
            except DeliveryFailed as exc:
                _give_up(exc)
            if acking is not None:
                await acking
            acking = asyncio.create_task(acknowledge(stream, events, sink, result, started))
            metrics.BATCH_SIZE.observe(len(events))
            stats.add(len(events), scored - started, time.perf_counter() - scored)
            yield len(events)
    finally:
        if acking is not None:
            acking.cancel()
        if metrics_server is not None:
            await metrics_server.cleanup()


def _inline_explainer() -> InlineExplainer | None:
    if settings.scorer_inline_explain == "off":
        return None
    method = settings.scorer_inline_explain
    log.warning("explaining inline (%s) before each verdict: a benchmark setting", method)
    inline = InlineExplainer(settings.models_dir, method)
    inline.explainers.get(settings.model_version).warm(method)
    return inline


class _BatchStats:
    """One INFO line every 10 s while transactions flow: batch sizes and where the time went."""

    EVERY_S = 10.0

    def __init__(self) -> None:
        self.batches = self.events = 0
        self.score_s = self.apply_s = 0.0
        self.since = time.monotonic()

    def add(self, events: int, score_s: float, apply_s: float) -> None:
        self.batches += 1
        self.events += events
        self.score_s += score_s
        self.apply_s += apply_s
        now = time.monotonic()
        if now - self.since >= self.EVERY_S:
            log.info(
                "scored %d tx in %d batches (mean %.1f) over %.0f s: score %.0f µs/tx, apply %.1f ms/batch",
                self.events, self.batches, self.events / self.batches, now - self.since,
                1e6 * self.score_s / self.events, 1e3 * self.apply_s / self.batches,
            )  # fmt: skip
            self.__init__()  # type: ignore[misc]
