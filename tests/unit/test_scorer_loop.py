"""The scorer's loop without a broker: a fake librdkafka consumer and producer, real stores.

What it must keep (app/scorer/loop.py): a batch's rows are acked before any of its verdicts
is queued; an offset is committed only once its verdict was acked; records of a partition this
worker no longer owns are never scored; a revocation settles and commits before it releases.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import KafkaError, KafkaException

from app.kafka.recovery import RecoveryReport
from app.kafka.sink import DeliveryFailed, Sink
from app.model.batch import BatchScorer
from app.model.generator import generate_transactions
from app.model.predictor import ModelScorer
from app.scorer import loop as scoring
from app.settings import Settings
from tests.unit.test_sink import FakeProducer


class FakeMessage:
    def __init__(self, partition: int, offset: int, key: bytes | None, value: bytes | None) -> None:
        self._partition, self._offset, self._key, self._value = partition, offset, key, value

    def topic(self) -> str:
        return "transactions"

    def partition(self) -> int:
        return self._partition

    def offset(self) -> int:
        return self._offset

    def key(self) -> bytes | None:
        return self._key

    def value(self) -> bytes | None:
        return self._value

    def error(self) -> None:
        return None


class FakeConsumer:
    """Hands out queued records; ``between`` runs a callback (a rebalance) before a consume."""

    def __init__(self, config: dict[str, Any], log: list[Any]) -> None:
        self.config, self.log = config, log
        self.queue: list[FakeMessage] = []
        self.commits: list[dict[int, int]] = []
        self.callbacks: dict[str, Any] = {}
        self.between: list[Any] = []
        self.closed = False

    def subscribe(self, topics: list[str], **callbacks: Any) -> None:
        self.callbacks = callbacks

    def poll(self, timeout: float) -> FakeMessage | None:
        return self.queue.pop(0) if self.queue else None

    def consume(self, n: int, timeout: float) -> list[FakeMessage]:
        while self.between:
            self.between.pop(0)()
        taken, self.queue = self.queue[:n], self.queue[n:]
        return taken

    def commit(self, offsets: list[Any], asynchronous: bool) -> None:
        self.commits.append({tp.partition: tp.offset for tp in offsets})
        self.log.append(("commit", asynchronous))

    def close(self) -> None:
        self.closed = True


class LoggingProducer(FakeProducer):
    def __init__(self, config: dict[str, Any], log: list[Any]) -> None:
        super().__init__(config)
        self.log = log
        self.sent: list[tuple[str, Any, Any]] = []

    def produce(self, topic: str, key: Any, value: Any, on_delivery: Any, partition: int = 0) -> None:
        self.log.append(("produce", topic))
        self.sent.append((topic, key, value))
        super().produce(topic, key, value, on_delivery, partition)

    def flush(self, timeout: float) -> int:
        self.log.append(("flush",))
        return super().flush(timeout)


class _Partition:
    def __init__(self, partition: int) -> None:
        self.partition = partition


@pytest.fixture
def loop(tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Any]:
    log: list[Any] = []
    settings = Settings(models_dir=models_dir, data_dir=tmp_path, scorer_batch_max=100)
    tables = scoring.ScorerTables(settings, tmp_path / "scorer")
    monkeypatch.setattr(scoring, "recover", lambda *_a, **_k: RecoveryReport())
    scorer = BatchScorer(
        ModelScorer(models_dir),
        tables.predictions,
        tables.card_activity,
        settings.max_message_bytes,
        lambda: 1.78e9,
    )
    sink = Sink(settings, lambda config: LoggingProducer(config, log))
    made = scoring.ScorerLoop(settings, scorer, sink, tables, lambda config: FakeConsumer(config, log))
    made.consumer.subscribe(["transactions"])
    made.log = log
    yield made
    tables.close()


def _records(partition: int, count: int, seed: int, first_offset: int = 0) -> list[FakeMessage]:
    return [
        FakeMessage(partition, first_offset + i, tx["card_id"].encode(), orjson.dumps(tx))
        for i, tx in enumerate(generate_transactions(count, seed=seed))
    ]


def _one_batch(loop: Any) -> None:
    batch = loop.next_batch(0)
    assert batch
    loop.process(batch)


def test_a_batch_rows_are_acked_before_any_of_its_verdicts_is_queued(loop: Any) -> None:
    loop._assigned(loop.consumer, [_Partition(0)])
    loop.consumer.queue = _records(0, 5, seed=1)
    _one_batch(loop)
    events = [e for e in loop.log if e[0] in ("produce", "flush")]
    first_verdict = events.index(("produce", "verdicts"))
    assert ("flush",) in events[:first_verdict]
    assert all(e[1].endswith("-changelog") for e in events[: events.index(("flush",))])
    assert events.count(("produce", "verdicts")) == 5
    assert loop.tables.predictions.persisted_offset(0) is not None  # the acked changelog position


def test_an_offset_is_committed_only_after_its_verdict_was_acked(loop: Any) -> None:
    loop._assigned(loop.consumer, [_Partition(0)])
    loop.consumer.queue = _records(0, 3, seed=2)
    _one_batch(loop)
    loop.commit(asynchronous=True)
    assert loop.consumer.commits == [], "the verdicts were queued, not yet acked"
    loop.settle()
    loop.commit(asynchronous=True)
    assert loop.consumer.commits == [{0: 3}]


def test_the_next_batch_flush_acks_the_previous_batch(loop: Any) -> None:
    loop._assigned(loop.consumer, [_Partition(0)])
    loop.consumer.queue = _records(0, 2, seed=3)
    _one_batch(loop)
    loop.consumer.queue = _records(0, 2, seed=4, first_offset=2)
    _one_batch(loop)
    assert loop.processed == {0: 2} and loop.unacked == {0: 4}


def test_records_of_a_partition_revoked_inside_consume_are_not_scored(loop: Any) -> None:
    loop._assigned(loop.consumer, [_Partition(0), _Partition(1)])
    loop.consumer.queue = _records(0, 1, seed=5) + _records(1, 4, seed=6)
    loop.consumer.between.append(lambda: loop._revoked(loop.consumer, [_Partition(1)]))
    batch = loop.next_batch(0)
    assert [m.partition() for m in batch] == [0]
    assert loop.owned == {0} and 1 not in loop.tables.predictions.held()


def test_a_revocation_settles_and_commits_synchronously_before_releasing(loop: Any) -> None:
    loop._assigned(loop.consumer, [_Partition(2)])
    loop.consumer.queue = _records(2, 4, seed=7)
    _one_batch(loop)
    loop._revoked(loop.consumer, [_Partition(2)])
    assert loop.consumer.commits == [{2: 4}]
    assert ("commit", False) in loop.log
    assert loop.log.index(("commit", False)) > max(i for i, e in enumerate(loop.log) if e == ("flush",))
    assert loop.owned == set() and loop.tables.predictions.held() == set()


def test_a_lost_partition_is_released_without_a_commit(loop: Any) -> None:
    loop._assigned(loop.consumer, [_Partition(3)])
    loop.consumer.queue = _records(3, 2, seed=8)
    _one_batch(loop)
    loop._lost(loop.consumer, [_Partition(3)])
    loop.commit(asynchronous=False)
    assert loop.consumer.commits == [] and loop.unacked == {}


def test_a_refused_record_stops_the_worker_before_its_offset_counts(
    loop: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    def give_up(exc: Exception) -> None:
        raise SystemExit(75)

    monkeypatch.setattr(scoring, "_give_up", give_up)
    loop._assigned(loop.consumer, [_Partition(0)])
    loop.sink._producer.refuse = {"verdicts"}
    loop.consumer.queue = _records(0, 2, seed=9)
    _one_batch(loop)
    with pytest.raises(SystemExit):
        loop.settle()
    assert loop.processed == {}


def test_a_dlq_record_refused_at_once_stops_the_worker_naming_its_offset(
    loop: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a crash with a traceback on every restart, and never a skip: the sink's retries, then
    one line naming the input, and its offset is not counted (issue 17)."""
    stopped: list[str] = []

    def give_up(exc: Exception) -> None:
        stopped.append(str(exc))
        raise SystemExit(75)

    def refuse(topic: str, *args: Any, **kwargs: Any) -> None:
        if topic == "transactions.dlq":
            raise KafkaException(KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))

    monkeypatch.setattr(scoring, "_give_up", give_up)
    loop.sink.sleep = lambda _s: None
    loop._assigned(loop.consumer, [_Partition(0)])
    monkeypatch.setattr(loop.sink._producer, "produce", refuse)
    loop.consumer.queue = [FakeMessage(0, 41, b"card-x", b"not json")]
    with pytest.raises(SystemExit):
        _one_batch(loop)
    assert len(stopped) == 1 and "transactions[0] offset 41" in stopped[0], stopped
    assert loop.processed == {} and loop.unacked == {}


def test_a_transaction_seen_again_after_a_rebalance_gets_its_stored_verdict(loop: Any) -> None:
    loop._assigned(loop.consumer, [_Partition(0)])
    records = _records(0, 3, seed=10)
    loop.consumer.queue = list(records)
    _one_batch(loop)
    loop._revoked(loop.consumer, [_Partition(0)])
    loop._assigned(loop.consumer, [_Partition(0)])  # the same stores again
    loop.consumer.queue = [FakeMessage(0, 3 + i, m.key(), m.value()) for i, m in enumerate(records)]
    _one_batch(loop)
    verdicts: dict[bytes, list[bytes]] = {}
    for topic, key, value in loop.sink._producer.sent:
        if topic == "verdicts":
            verdicts.setdefault(key, []).append(value)
    assert len(verdicts) == 3
    assert all(len(values) == 2 and values[0] == values[1] for values in verdicts.values())
    assert all(loop.tables.predictions.get(0, key) == values[0] for key, values in verdicts.items())


def test_delivery_failed_is_what_a_refusal_raises(tmp_path: Path) -> None:
    sink = Sink(Settings(data_dir=tmp_path), lambda config: FakeProducer(config))
    sink._producer.refuse = {"verdicts"}
    sink.produce("verdicts", b"k", b"v")
    with pytest.raises(DeliveryFailed):
        sink.flush_now()


@pytest.mark.parametrize("acked_before", [True, False])
def test_stores_ahead_of_the_broker_stop_a_scorer_whose_producer_it_acked(
    loop: Any, monkeypatch: pytest.MonkeyPatch, acked_before: bool
) -> None:
    """A broker that lost writes it acked to this producer: its idempotent sequence numbers are
    ahead and its next produce fails for good, so the loop stops before scoring (exit 75). A
    new scorer (nothing acked yet) with stores ahead goes on (the stored verdicts are re-sent)."""
    failed: list[str] = []

    def client_failed(error: str) -> None:
        failed.append(error)
        raise SystemExit(75)

    monkeypatch.setattr(scoring, "_client_failed", client_failed)
    if acked_before:
        loop._assigned(loop.consumer, [_Partition(0)])
        loop.consumer.queue = _records(0, 2, seed=9)
        _one_batch(loop)
        loop.settle()
    ahead = RecoveryReport(ahead=["fraudlens-predictions-changelog[0] holds 9, ends at 4"])
    monkeypatch.setattr(scoring, "recover", lambda *_a, **_k: ahead)
    loop.consumer.queue = _records(0, 2, seed=10, first_offset=2)
    loop.consumer.callbacks = {}
    loop._assigned(loop.consumer, [_Partition(0)])
    stop = threading.Event()
    first_batch = loop.next_batch

    def one_turn(timeout: float) -> list[Any]:
        stop.set()  # one turn of the loop, whatever it does
        batch: list[Any] = first_batch(timeout)
        return batch

    loop.next_batch = one_turn
    produced = len([e for e in loop.log if e[0] == "produce"])
    if acked_before:
        with pytest.raises(SystemExit):
            loop.run(stop)
        assert failed == [
            "the broker lost acked writes (fraudlens-predictions-changelog[0] holds 9, ends at 4)"
        ]
        assert len([e for e in loop.log if e[0] == "produce"]) == produced  # nothing scored after
    else:
        loop.run(stop)
        assert failed == [] and loop.lost_writes is None
        assert len([e for e in loop.log if e[0] == "produce"]) > produced  # scored and sent


def test_a_fatal_consumer_error_leaves_the_group_then_stops_with_75(
    loop: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """One way out for a client that failed for good, consumer or producer: the group is left
    (the restarted scorer is assigned at once) and the code is 75, as for the sink's."""
    failed: list[str] = []

    def client_failed(error: str) -> None:
        failed.append(error)
        raise SystemExit(75)

    class FatalError:
        def fatal(self) -> bool:
            return True

        def str(self) -> str:
            return "Broker: Fenced instance id"

        def code(self) -> int:
            return KafkaError._FATAL

    class Fatal(FakeMessage):
        def error(self) -> Any:  # type: ignore[override]
            return FatalError()

    monkeypatch.setattr(scoring, "_client_failed", client_failed)
    loop._assigned(loop.consumer, [_Partition(0)])
    loop.consumer.queue = [Fatal(0, 0, None, None)]
    with pytest.raises(SystemExit):
        loop.next_batch(0)
    assert failed == ["consumer: Broker: Fenced instance id"]
    assert loop.consumer.closed  # left the group first
