"""The scorer: transactions → verdicts, micro-batched. The critical path.

One loop per process over a librdkafka consumer (a group member of ``<app_id>``): take a batch,
score it (:class:`app.model.batch.BatchScorer`), write the tables, send the verdicts. Faust's
per-record path (its consumer thread, the hand-off of every fetch, stream and event objects)
cost ~0.45 ms of CPU per transaction on top of scoring; this loop does the same work with the
records decoded in C (DESIGN-NOTES: the scorer without Faust).

Order of effects per batch: predictions rows and card states are written to the local stores
and their changelog records acked by the broker before any verdict of the batch is sent. A
worker killed mid-batch can therefore have persisted a prediction without its verdict (the
replay re-sends the stored verdict) but never a verdict without its prediction (the replay would
score again, with new timestamps). A batch's offsets count as processed only once its verdicts
and DLQ records were acked (the next batch's flush or an idle flush covers them), and only
processed offsets are committed, so a verdict is never skipped on replay.

Partitions: the group's eager rebalance calls ``_assigned`` and ``_revoked`` from inside
``poll``/``consume``, between batches. A newly assigned partition's stores are recovered from
their changelogs before any of its transactions is read; a revoked one has its acks awaited and
its offsets committed before it goes to another worker.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from app.explain.inline import InlineExplainer
from app.kafka import topics
from app.kafka.admin import client_config
from app.kafka.local_table import LocalTable
from app.kafka.outage import (
    EX_UNAVAILABLE,
    RIDE_THROUGH_S,
    UNREACHABLE_CODES,
    BrokerUnreachable,
    Outage,
    fatal_exit,
    quiet_client_logs,
    retry,
)
from app.kafka.recovery import recover
from app.kafka.sink import DeliveryFailed, Sink
from app.kafka.table_catalogue import CARD_ACTIVITY, PREDICTIONS
from app.model.batch import BatchResult, BatchScorer, Incoming
from app.model.predictor import ModelScorer
from app.model.registry import Registry
from app.runtime import metrics
from app.runtime.stats import BatchTimings
from app.settings import ScorerSettings

log = logging.getLogger(__name__)
STATS_EVERY_S = 10.0


class ScorerTables:
    """The scorer's two tables, written only by it (one loop per process):

    - ``predictions``: transaction_id → the verdict sent for it (raw JSON bytes). A transaction
      seen again gets this stored verdict re-sent byte for byte, never a second score; rows live
      ``FRAUDLENS_DEDUP_WINDOW_S`` (a retry is a retry within a bounded window).
    - ``card_activity``: card_id → bounded velocity state (JSON), the model's per-card features.
      The state remembers the ids of the transactions applied to it, so a replay after a crash
      never counts a transaction twice.
    """

    def __init__(self, settings: ScorerSettings, worker_dir: Path) -> None:
        self.predictions = LocalTable(PREDICTIONS, settings, worker_dir)
        self.card_activity = LocalTable(CARD_ACTIVITY, settings, worker_dir)
        self.all: tuple[LocalTable, ...] = (self.predictions, self.card_activity)

    def close(self, partitions: set[int] | None = None) -> None:
        for table in self.all:
            table.close(partitions)


def load_model(settings: ScorerSettings) -> ModelScorer:
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


def consumer_config(settings: ScorerSettings) -> dict[str, Any]:
    config = client_config(
        settings,
        **{
            "group.id": settings.app_id,
            "client.id": f"{settings.app_id}-scorer",
            "enable.auto.commit": False,  # only processed offsets are committed (ScorerLoop.commit)
            "auto.offset.reset": "earliest",
            "session.timeout.ms": int(settings.session_timeout_s * 1000),
            "heartbeat.interval.ms": int(settings.heartbeat_interval_s * 1000),
            "fetch.wait.max.ms": settings.fetch_max_wait_ms,
            "max.poll.interval.ms": 600_000,  # a long table recovery runs inside poll()
            # Above the largest record a broker takes (1 MiB here, Kafka's default ~1 MB), so any
            # accepted record fits one fetch; librdkafka also returns a larger first record whole.
            "fetch.message.max.bytes": max(4 * 1_048_576, 2 * settings.max_message_bytes),
        },
    )
    if settings.instance_id:
        config["group.instance.id"] = settings.instance_id
    return config


class ScorerLoop:
    """Consume → score → write tables → send verdicts, one batch at a time."""

    def __init__(
        self,
        settings: ScorerSettings,
        scorer: BatchScorer,
        sink: Sink,
        tables: ScorerTables,
        consumer_factory: Callable[[dict[str, Any]], Any] | None = None,
        inline: InlineExplainer | None = None,
        watcher: ModelWatcher | None = None,
        outage: Outage | None = None,
    ) -> None:
        if consumer_factory is None:
            from confluent_kafka import Consumer

            consumer_factory = Consumer
        self.settings, self.scorer, self.sink, self.tables = settings, scorer, sink, tables
        self.inline, self.watcher = inline, watcher
        # One tracker for the consumer and the sink: one line when the broker goes, one when back;
        # a fatal client error (either client) leaves the group, then stops the worker.
        self.outage = outage or Outage("scorer", log)
        self.outage.on_fatal = self._failed_for_good
        self.probed_at = 0.0
        self.failing = False
        self.lost_writes: str | None = None  # set by the assign callback, acted on by the loop
        self.consumer: Any = consumer_factory(quiet_client_logs(consumer_config(settings), self.outage))
        self.owned: set[int] = set()
        self.unacked: dict[int, int] = {}  # partition → next offset, sent but not yet acked
        self.processed: dict[int, int] = {}  # partition → next offset, acked, not yet committed
        self.committed_at = time.monotonic()
        self.stats = BatchTimings(STATS_EVERY_S)

    # -- the loop ------------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        self.consumer.subscribe(
            [topics.TRANSACTIONS], on_assign=self._assigned, on_revoke=self._revoked, on_lost=self._lost
        )
        try:
            while not stop.is_set():
                batch = self.next_batch(0.5)
                if self.lost_writes is not None:
                    self._failed_for_good(self.lost_writes)
                if batch:
                    self.process(batch)
                elif self.outage.active:
                    self._probe()
                if time.monotonic() - self.committed_at >= self.settings.scorer_commit_interval_s:
                    if self.unacked:
                        self.settle()
                    self.commit(asynchronous=True)
        finally:
            self.close()

    def next_batch(self, timeout: float) -> list[Any]:
        """The next batch: waits ``timeout`` for a first record, then at most the batch window
        for more (up to the batch size); records of partitions this worker no longer owns (a
        rebalance inside ``consume``) are dropped: their new owner reads them."""
        first = self.consumer.poll(timeout)
        if first is None:
            return []
        messages = [first]
        if self.settings.scorer_batch_max > 1:
            messages += self.consumer.consume(
                self.settings.scorer_batch_max - 1, timeout=self.settings.scorer_batch_within_s
            )
        batch = []
        for message in messages:
            error = message.error()
            if error is not None:
                _log_consumer_error(error, self.outage)
            elif message.partition() in self.owned:
                batch.append(message)
        return batch

    def process(self, messages: Sequence[Any]) -> None:
        if self.watcher is not None:
            newer = self.watcher.newer(self.scorer.model)
            if newer is not None:
                self.scorer.model = newer
                metrics.set_model(newer.version)
        started = time.perf_counter()
        batch = [Incoming(m.key(), m.value(), m.topic(), m.partition(), m.offset()) for m in messages]
        result = self.scorer.score(batch)
        if self.inline is not None:  # benchmarks only: the synchronous design (bench.sync)
            self.inline.explain(result.verdicts)
        scored = time.perf_counter()
        self.apply(batch, result)
        for item in batch:
            self.unacked[item.partition] = item.offset + 1
        _count(result, started, len(batch))
        self.stats.add(len(batch), score=scored - started, apply=time.perf_counter() - scored)
        if self.stats.due():  # one line every STATS_EVERY_S while transactions flow
            log.info("scorer: %s", self.stats.line())

    def apply(self, batch: Sequence[Incoming], result: BatchResult) -> None:
        """Rows to the stores and changelogs, acked, then the verdicts and DLQ records queued.
        The flush also acks everything earlier batches sent: their offsets become processed. A
        batch's own verdicts are confirmed by the next flush (the next batch's, or the one before
        a commit), so the loop never waits for them: they are already on their way."""
        for index, txid, verdict in result.predictions:
            self._write(self.tables.predictions, batch[index].partition, txid, verdict)
        for card, (index, state) in result.card_states.items():
            self._write(self.tables.card_activity, batch[index].partition, card, state)
        if result.predictions or result.card_states:
            self.settle()
        try:
            for txid, verdict in result.verdicts:
                self.sink.produce(topics.VERDICTS, txid, verdict)
            for index, key, record in result.dlq:
                item = batch[index]
                about = f"the DLQ record of {item.topic}[{item.partition}] offset {item.offset}"
                self.sink.produce(topics.TRANSACTIONS_DLQ, key, record, about=about)
        except DeliveryFailed as exc:  # refused at once, even after the sink's own retries
            _give_up(exc)

    def settle(self) -> None:
        """Wait for every queued record's ack; what was sent becomes processed."""
        try:
            # While the broker is away librdkafka keeps the records queued and retries them for
            # its message.timeout.ms (300 s); waiting as long rides through an outage, after
            # which a record not acked is a DeliveryFailed (exit 75: replayed on restart).
            highest = self.sink.flush_now(RIDE_THROUGH_S + 10)
        except DeliveryFailed as exc:
            _give_up(exc)
        if highest or self.unacked:
            self.outage.up()
        for (topic, partition), offset in highest.items():
            for table in self.tables.all:
                if topic == table.changelog_topic and partition in table.held():
                    table.set_persisted_offset(partition, offset)
        self.processed.update(self.unacked)
        self.unacked.clear()

    def commit(self, asynchronous: bool, partitions: set[int] | None = None) -> None:
        from confluent_kafka import KafkaException, TopicPartition

        offsets = {p: o for p, o in self.processed.items() if partitions is None or p in partitions}
        self.committed_at = time.monotonic()
        if not offsets:
            return
        try:
            self.consumer.commit(
                offsets=[TopicPartition(topics.TRANSACTIONS, p, o) for p, o in sorted(offsets.items())],
                asynchronous=asynchronous,
            )
        except KafkaException as exc:  # uncommitted offsets are replayed: re-sends, never losses
            log.warning("offset commit failed (%s); those transactions are re-read after a restart", exc)
            return
        for partition in offsets:
            if self.processed.get(partition) == offsets[partition]:
                del self.processed[partition]

    def close(self) -> None:
        try:
            if self.unacked:
                self.settle()
            self.commit(asynchronous=False)
        finally:
            self.consumer.close()  # leaves the group: the partitions move on at once
            self.tables.close()
            self.sink.close()

    # -- table writes and partitions -----------------------------------------------------------

    def _write(self, table: LocalTable, partition: int, key: bytes, value: bytes) -> None:
        table.put(partition, key, value)
        self.sink.changelog(table.changelog_topic, partition, key, value)

    def _failed_for_good(self, error: str) -> None:
        """A client failed for good: leave the group first (bounded), so the restarted scorer
        gets the partitions at once instead of after the dead member's session timeout (10 s of
        the ~11 s a restart took in the fault suite), then stop (``_client_failed``)."""
        self.failing = True
        leave = threading.Thread(target=self.consumer.close, daemon=True, name="leave-group")
        leave.start()
        leave.join(2.0)
        _client_failed(error)

    def _probe(self) -> None:
        """While the broker is away and nothing arrives: a cheap metadata call every 2 s, so
        the end of an idle outage is logged too."""
        self.outage.check()
        if time.monotonic() - self.probed_at < 2.0:
            return
        self.probed_at = time.monotonic()
        try:
            self.consumer.list_topics(topics.TRANSACTIONS, timeout=1.0)
        except Exception:  # still away: the outage was logged when it began
            return
        self.outage.up()

    def _assigned(self, consumer: Any, partitions: list[Any]) -> None:
        wanted = sorted(tp.partition for tp in partitions)

        def recover_tables() -> Any:
            try:
                return recover(self.settings, self.tables.all, wanted)
            except Exception as exc:
                # A broker that lost its last second of writes (noida-db SIGKILLed) can have lost
                # the changelog topics created in it too ("Unknown partition" from the
                # watermarks, for ever): recreate them, then retry; a no-op while they exist.
                if _recovery_retriable(exc):
                    ensure_changelogs(self.settings, self.tables)
                raise

        try:  # the broker may go away mid-recovery: read again from what the stores hold
            report = retry(recover_tables, self.outage, retriable=_recovery_retriable)
        except BrokerUnreachable as exc:
            _unavailable(exc)
        if report.ahead and self.sink.acked_any:
            # The broker lost writes it had acked to this producer: its idempotent sequence
            # numbers are now ahead of the broker's and its next produce fails for good (seen
            # 3 s later). The loop stops before it scores anything (not from inside this
            # callback, where the consumer cannot leave its group); a new producer starts clean.
            self.lost_writes = f"the broker lost acked writes ({report.ahead[0]})"
        for table in self.tables.all:
            for partition in wanted:
                table.open(partition)
        self.owned |= set(wanted)
        log.info(
            "assigned transactions partitions %s; tables recovered (%d changelog records in %.2f s)",
            wanted, report.total, report.seconds,
        )  # fmt: skip

    def _revoked(self, consumer: Any, partitions: list[Any]) -> None:
        gone = {tp.partition for tp in partitions}
        if self.failing:  # leaving the group on the way out: nothing may be committed now
            return
        if self.unacked:
            self.settle()
        self.commit(asynchronous=False, partitions=gone)
        self._release(gone)
        log.info("revoked transactions partitions %s (offsets committed)", sorted(gone))

    def _lost(self, consumer: Any, partitions: list[Any]) -> None:
        gone = {tp.partition for tp in partitions}
        self._release(gone)
        log.warning(
            "lost transactions partitions %s (session expired): their new owner replays them", sorted(gone)
        )

    def _release(self, gone: set[int]) -> None:
        self.owned -= gone
        for partition in gone:
            self.unacked.pop(partition, None)
            self.processed.pop(partition, None)
        self.tables.close(gone)


def _count(result: BatchResult, started: float, size: int) -> None:
    latency = time.perf_counter() - started
    for _ in result.verdicts:
        metrics.VERDICT_LATENCY.observe(latency)
    for decision, count in result.decisions.items():
        metrics.VERDICTS.labels(decision=decision).inc(count)
    for reason, count in result.rejected.items():
        metrics.DLQ_RECORDS.labels(reason=reason).inc(count)
    metrics.BATCH_SIZE.observe(size)


_last_error_log = [0.0]


def _log_consumer_error(error: Any, outage: Outage) -> None:
    if error.fatal():  # the loop's on_fatal leaves the group first; either way exit 75
        (outage.on_fatal or _client_failed)(f"consumer: {error.str()}")
        return
    if error.code() in UNREACHABLE_CODES:
        outage.down(error.str())
        return
    now = time.monotonic()
    if now - _last_error_log[0] > 5:  # a broker restart reports every connection: once per 5 s
        _last_error_log[0] = now
        log.warning("consumer: %s", error)


def _give_up(exc: Exception) -> NoReturn:
    # The batch's offsets stay unprocessed; a restarted worker replays them from the last commit.
    # Carrying on would count transactions whose records the broker never took, and skipping
    # the one that cannot be written would lose it silently (DESIGN-NOTES: when even the DLQ
    # record cannot be written).
    fatal_exit(log, f"the broker did not take this batch's records ({exc}): stopping the worker; the "
               "records stay unprocessed and are read again on restart")  # fmt: skip


def _unavailable(exc: BrokerUnreachable) -> NoReturn:
    # Called where unwinding would try to commit and flush against the absent broker (inside
    # the consumer's assign callback): one line, and a code a supervisor restarts on.
    fatal_exit(log, f"{exc}: stopping the worker (a supervisor restarts it)", EX_UNAVAILABLE)


def _client_failed(error: str) -> None:
    # A fatal client error, e.g. the idempotent producer finding the broker's sequence numbers
    # behind its own after a restart that lost acked writes (noida-db SIGKILLed): this client
    # cannot go on. Nothing unacked counted as processed, so a restart replays it.
    fatal_exit(log, f"a Kafka client failed for good ({error}): stopping the worker; a restart replays "
               "what was not committed")  # fmt: skip


def _recovery_retriable(exc: BaseException) -> bool:
    from confluent_kafka import KafkaException

    from app.kafka.recovery import RecoveryStalled

    return isinstance(exc, KafkaException | RecoveryStalled)


def inline_explainer(settings: ScorerSettings) -> InlineExplainer | None:
    if settings.scorer_inline_explain == "off":
        return None
    method = settings.scorer_inline_explain
    log.warning("explaining inline (%s) before each verdict: a benchmark setting", method)
    inline = InlineExplainer(settings.models_dir, method)
    inline.explainers.get(settings.model_version).warm(method)
    return inline


def ensure_changelogs(settings: ScorerSettings, tables: ScorerTables) -> None:
    """The tables' changelog topics, partitioned like ``transactions``, with their configs."""
    from app.kafka.admin import ensure_topics

    ensure_topics(
        settings,
        tuple(t.changelog_topic for t in tables.all),
        configs={t.changelog_topic: t.changelog_config for t in tables.all},
    )


def outage_aware_producer(outage: Outage) -> Callable[[dict[str, Any]], Any]:
    """The sink's producer, reporting to ``outage`` instead of logging every reconnect."""
    from confluent_kafka import Producer

    return lambda config: Producer(quiet_client_logs(config, outage))
