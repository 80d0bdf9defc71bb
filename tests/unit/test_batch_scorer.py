"""BatchScorer, the scoring critical path, with plain dicts standing in for the two Faust tables.

``apply`` below does what ``app.scorer.loop.apply`` does to the tables (prediction rows, then
card states); the Kafka sends are read straight from the ``BatchResult``.
"""

from __future__ import annotations

import base64
import itertools
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from app.model import features as F
from app.model.batch import BatchResult, BatchScorer, Incoming
from app.model.generator import generate_transactions
from app.model.predictor import ModelScorer
from app.records.contracts import validate_message
from app.records.malformed import MALFORMED_KINDS, malformed_messages
from app.records.validation import DEFAULT_MAX_BYTES
from tests.replay import current_booster, transaction_of
from tests.tables import MemoryTable

TOPIC = "transactions"
START = 1_780_000_000.0  # 2026-05-28, a plausible wall clock for received_at/scored_at


class FakeClock:
    """Deterministic wall clock: every read is 2 ms after the previous one."""

    def __init__(self, start: float = START) -> None:
        self._ticks = itertools.count()
        self.start = start

    def __call__(self) -> float:
        return self.start + next(self._ticks) * 0.002


class RecordingTable(MemoryTable):
    """A table that logs every ``get`` (the only read BatchScorer makes) into a shared log."""

    def __init__(self, name: str, log: list[tuple[Any, ...]]) -> None:
        super().__init__()
        self.name = name
        self.log = log

    def get(self, partition: int, key: bytes, /) -> bytes | None:
        self.log.append(("read", self.name, partition, key))
        return super().get(partition, key)


@pytest.fixture(scope="module")
def model(models_dir: Path) -> ModelScorer:
    return ModelScorer(models_dir)


@pytest.fixture(scope="module")
def stream() -> list[dict[str, Any]]:
    return list(generate_transactions(300, seed=11))


@pytest.fixture
def predictions() -> MemoryTable:
    return MemoryTable()


@pytest.fixture
def cards() -> MemoryTable:
    return MemoryTable()


@pytest.fixture
def scorer(model: ModelScorer, predictions: MemoryTable, cards: MemoryTable) -> BatchScorer:
    return BatchScorer(model, predictions, cards, DEFAULT_MAX_BYTES, FakeClock())


def message(tx: dict[str, Any], offset: int, key: bytes | None, partition: int | None = None) -> Incoming:
    return Incoming(key, orjson.dumps(tx), TOPIC, offset % 3 if partition is None else partition, offset)


def incoming(tx: dict[str, Any], offset: int) -> Incoming:
    """``tx`` as the producer sends it: keyed by its card_id."""
    return message(tx, offset, tx["card_id"].encode())


def batch_of(txs: list[dict[str, Any]], first_offset: int = 0) -> list[Incoming]:
    return [incoming(tx, first_offset + i) for i, tx in enumerate(txs)]


def apply(result: BatchResult, predictions: dict[bytes, bytes], cards: dict[bytes, bytes]) -> None:
    for _, txid, verdict in result.predictions:
        predictions[txid] = verdict
    for card, (_, state) in result.card_states.items():
        cards[card] = state


def verdicts(result: BatchResult) -> list[dict[str, Any]]:
    return [orjson.loads(v) for _, v in result.verdicts]


def written_state(result: BatchResult, card: str) -> dict[str, Any]:
    state: dict[str, Any] = orjson.loads(result.card_states[card.encode()][1])
    return state


def stored_state(cards: dict[bytes, bytes], card: str) -> dict[str, Any]:
    state: dict[str, Any] = orjson.loads(cards[card.encode()])
    return state


def card_with_history(stream: list[dict[str, Any]], at_least: int) -> list[dict[str, Any]]:
    """The transactions (in stream order) of the first card seen at least ``at_least`` times."""
    by_card: dict[str, list[dict[str, Any]]] = {}
    for tx in stream:
        by_card.setdefault(tx["card_id"], []).append(tx)
    return next(txs for txs in by_card.values() if len(txs) >= at_least)


# ----------------------------------------------------------------------------- valid input


def test_each_valid_transaction_gets_one_verdict(scorer: BatchScorer, stream: list[dict[str, Any]]) -> None:
    txs = stream[:40]

    result = scorer.score(batch_of(txs))

    assert [txid for txid, _ in result.verdicts] == [tx["transaction_id"].encode() for tx in txs]
    assert result.dlq == []
    assert result.resent == 0


def test_verdicts_satisfy_the_verdict_contract(scorer: BatchScorer, stream: list[dict[str, Any]]) -> None:
    result = scorer.score(batch_of(stream[:40]))

    for verdict in verdicts(result):
        validate_message("verdict", verdict)


def test_verdict_carries_the_transaction_fields_and_model(
    scorer: BatchScorer, model: ModelScorer, stream: list[dict[str, Any]]
) -> None:
    tx = stream[0]

    (verdict,) = verdicts(scorer.score(batch_of([tx])))

    copied = ["transaction_id", "card_id", "amount", "currency", "channel", "country", "mcc", "merchant_id"]
    assert {k: verdict[k] for k in copied} == {k: tx[k] for k in copied}
    assert (verdict["event_time"], verdict["card_country"]) == (tx["timestamp"], tx["card_country"])
    assert (verdict["model_version"], verdict["thresholds"]) == (model.version, model.thresholds)
    assert verdict["decision"] == model.decide(verdict["score"])[0]


def test_prediction_rows_hold_the_sent_verdict_bytes_under_the_batch_index(
    scorer: BatchScorer, stream: list[dict[str, Any]]
) -> None:
    txs = stream[:10]
    batch = batch_of(txs)
    batch.insert(3, Incoming(b"k", b"not json", TOPIC, 0, 99))  # shifts the later indices

    result = scorer.score(batch)

    expected_indices = [i for i in range(len(batch)) if i != 3]
    assert [index for index, _, _ in result.predictions] == expected_indices
    assert [(txid, v) for _, txid, v in result.predictions] == result.verdicts


def test_card_state_is_written_once_per_card_counting_its_transactions(
    scorer: BatchScorer, stream: list[dict[str, Any]]
) -> None:
    txs = stream[:120]
    per_card = {tx["card_id"]: sum(t["card_id"] == tx["card_id"] for t in txs) for tx in txs}
    assert max(per_card.values()) > 1  # the batch must put several transactions on one card

    result = scorer.score(batch_of(txs))

    assert sorted(result.card_states) == sorted(c.encode() for c in per_card)
    assert {card: written_state(result, card)["n"] for card in per_card} == per_card


def test_card_state_write_is_attributed_to_the_cards_last_item(
    scorer: BatchScorer, stream: list[dict[str, Any]]
) -> None:
    txs = stream[:120]
    last_index = {tx["card_id"].encode(): i for i, tx in enumerate(txs)}

    result = scorer.score(batch_of(txs))

    assert {card: index for card, (index, _) in result.card_states.items()} == last_index


def test_scored_state_contains_every_transaction_of_the_batch(
    scorer: BatchScorer, stream: list[dict[str, Any]]
) -> None:
    txs = stream[:60]

    result = scorer.score(batch_of(txs))

    assert all(F.contains(written_state(result, tx["card_id"]), tx["transaction_id"]) for tx in txs)


def test_unkeyed_message_is_scored(scorer: BatchScorer, stream: list[dict[str, Any]]) -> None:
    result = scorer.score([message(stream[0], 0, key=None)])

    assert [txid for txid, _ in result.verdicts] == [stream[0]["transaction_id"].encode()]
    assert result.dlq == []


def test_empty_batch_does_nothing(scorer: BatchScorer) -> None:
    assert scorer.score([]) == BatchResult()


# -------------------------------------------------------------------------- invalid input


def test_malformed_messages_go_to_the_dlq_with_their_reason(
    scorer: BatchScorer, predictions: dict[bytes, bytes], cards: dict[bytes, bytes]
) -> None:
    cases = malformed_messages(len(MALFORMED_KINDS), seed=5)
    batch = [Incoming(f"key-{i}".encode(), value, TOPIC, 2, 500 + i) for i, (value, _) in enumerate(cases)]

    result = scorer.score(batch)

    assert (result.verdicts, result.predictions, result.card_states) == ([], [], {})
    records = [orjson.loads(record) for _, _, record in result.dlq]
    for record in records:
        validate_message("dlq", record)
    assert [r["reason_code"] for r in records] == [code for _, code in cases]
    assert all(r["reason"] for r in records)
    assert [key for _, key, _ in result.dlq] == [item.key for item in batch]
    assert [r["source"] for r in records] == [
        {"topic": TOPIC, "partition": 2, "offset": 500 + i} for i in range(len(cases))
    ]


def test_dlq_record_carries_the_exact_original_bytes(scorer: BatchScorer) -> None:
    value, key = b'{"transaction_id": "tx-1", "amount": NaN}', b"\x00raw key\xff"

    result = scorer.score([Incoming(key, value, TOPIC, 0, 1)])

    (record,) = [orjson.loads(r) for _, _, r in result.dlq]
    assert base64.b64decode(record["original_value_b64"]) == value
    assert base64.b64decode(record["original_key_b64"]) == key


def test_huge_value_and_key_make_a_bounded_dlq_record(model: ModelScorer) -> None:
    """The whole value once went into the record (4/3 of it in base64): the broker refused it."""
    bounded = BatchScorer(model, MemoryTable(), MemoryTable(), DEFAULT_MAX_BYTES, FakeClock(), 64, 16)
    value, key = b"x" * 1_048_000, b"k" * 100_000

    result = bounded.score([Incoming(key, value, TOPIC, 3, 9)])

    ((_, dlq_key, raw),) = result.dlq
    record = orjson.loads(raw)
    validate_message("dlq", record)
    assert dlq_key == b"k" * 16 and len(raw) < 2_000
    assert (record["original_value_bytes"], record["original_value_truncated"]) == (1_048_000, True)
    assert base64.b64decode(record["original_value_b64"]) == b"x" * 64


def test_tombstone_goes_to_the_dlq_as_empty(scorer: BatchScorer) -> None:
    result = scorer.score([Incoming(b"card-1", None, TOPIC, 0, 1)])

    (record,) = [orjson.loads(r) for _, _, r in result.dlq]
    validate_message("dlq", record)
    assert (record["reason_code"], record["original_value_b64"]) == ("empty", None)


def test_message_not_keyed_by_its_card_id_goes_to_the_dlq_as_wrong_key(
    scorer: BatchScorer, stream: list[dict[str, Any]]
) -> None:
    tx = stream[0]

    result = scorer.score([message(tx, 0, key=b"card-somebody-else")])

    assert (result.verdicts, result.predictions, result.card_states) == ([], [], {})
    (record,) = [orjson.loads(r) for _, _, r in result.dlq]
    validate_message("dlq", record)
    assert (record["reason_code"], record["transaction_id"]) == ("wrong_key", tx["transaction_id"])
    assert base64.b64decode(record["original_key_b64"]) == b"card-somebody-else"
    assert result.dlq[0][1] == b"card-somebody-else"


def test_invalid_items_do_not_disturb_the_valid_ones(
    scorer: BatchScorer, model: ModelScorer, stream: list[dict[str, Any]]
) -> None:
    clean = BatchScorer(model, MemoryTable(), MemoryTable(), DEFAULT_MAX_BYTES, FakeClock()).score(
        batch_of(stream[:5])
    )
    mixed = batch_of(stream[:5])
    mixed[1:1] = [Incoming(None, b"[]", TOPIC, 0, 90), message(stream[9], 91, key=b"wrong")]

    result = scorer.score(mixed)

    assert len(result.dlq) == 2
    assert result.verdicts == clean.verdicts


# ------------------------------------------------------------------------- replays and copies


def forbid_scoring(monkeypatch: pytest.MonkeyPatch, model: ModelScorer) -> None:
    def refuse(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        raise AssertionError(f"re-scored {len(matrix)} rows")

    monkeypatch.setattr(model, "predict", refuse)


def test_stored_prediction_is_resent_unchanged_and_rewritten_not_rescored(
    scorer: BatchScorer,
    model: ModelScorer,
    predictions: dict[bytes, bytes],
    cards: dict[bytes, bytes],
    stream: list[dict[str, Any]],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    tx = stream[0]
    txid, card = tx["transaction_id"].encode(), tx["card_id"].encode()
    stored = b'{"stored":"verdict bytes, exactly as first sent"}'
    predictions[txid] = stored
    cards[card] = orjson.dumps(F.apply_transaction(tx, None))
    forbid_scoring(monkeypatch, model)

    result = scorer.score([incoming(tx, 0)])

    assert result.verdicts == [(txid, stored)]
    assert result.predictions == [(0, txid, stored)]
    assert result.resent == 1
    assert written_state(result, tx["card_id"]) == stored_state(cards, tx["card_id"])


def test_replay_of_a_whole_batch_reproduces_its_verdicts_and_states(
    scorer: BatchScorer,
    predictions: dict[bytes, bytes],
    cards: dict[bytes, bytes],
    stream: list[dict[str, Any]],
) -> None:
    batch = batch_of(stream[:50])
    first = scorer.score(batch)
    apply(first, predictions, cards)
    states_after_first = dict(cards)

    replay = scorer.score(batch)
    apply(replay, predictions, cards)

    assert sorted(replay.verdicts) == sorted(first.verdicts)
    assert replay.resent == 50
    assert cards == states_after_first


def test_same_transaction_twice_in_one_batch_gets_two_identical_verdicts(
    scorer: BatchScorer, stream: list[dict[str, Any]]
) -> None:
    tx = stream[0]
    txid = tx["transaction_id"].encode()

    result = scorer.score([incoming(tx, 0), incoming(stream[1], 1), incoming(tx, 2)])

    mine = [verdict for t, verdict in result.verdicts if t == txid]
    assert len(mine) == 2 and mine[0] == mine[1]
    assert [t for _, t, _ in result.predictions].count(txid) == 1
    assert result.resent == 1
    assert written_state(result, tx["card_id"])["n"] == 1


def test_replay_after_a_lost_state_write_repairs_the_card_state_once(
    scorer: BatchScorer,
    predictions: dict[bytes, bytes],
    cards: dict[bytes, bytes],
    stream: list[dict[str, Any]],
) -> None:
    earlier, tx = card_with_history(stream, 2)[:2]
    apply(scorer.score([incoming(earlier, 0)]), predictions, cards)
    first = scorer.score([incoming(tx, 1)])
    for _, txid, verdict in first.predictions:  # the crash: prediction persisted, card state lost
        predictions[txid] = verdict
    assert stored_state(cards, tx["card_id"])["n"] == 1

    replay = scorer.score([incoming(tx, 1)])
    apply(replay, predictions, cards)
    again = scorer.score([incoming(tx, 1)])

    assert replay.verdicts == first.verdicts == again.verdicts
    repaired = stored_state(cards, tx["card_id"])
    assert repaired["n"] == 2
    assert F.contains(repaired, tx["transaction_id"])
    assert written_state(again, tx["card_id"]) == repaired  # a second replay adds nothing


def test_replay_after_a_lost_first_state_write_creates_the_card_state(
    scorer: BatchScorer,
    predictions: dict[bytes, bytes],
    cards: dict[bytes, bytes],
    stream: list[dict[str, Any]],
) -> None:
    tx = stream[0]
    first = scorer.score([incoming(tx, 0)])
    predictions.update({txid: verdict for _, txid, verdict in first.predictions})

    replay = scorer.score([incoming(tx, 0)])

    assert replay.verdicts == first.verdicts
    assert written_state(replay, tx["card_id"]) == F.apply_transaction(tx, None, (0, 0))


def card_history(
    stream: list[dict[str, Any]], count: int, tag: str, partition: int, first_offset: int
) -> tuple[str, list[Incoming]]:
    """``count`` transactions of one card, as records of one partition from ``first_offset``."""
    card = stream[0]["card_id"]
    txs = [
        {**tx, "card_id": card, "transaction_id": f"tx-{n:06d}-{tag}"} for n, tx in enumerate(stream[:count])
    ]
    return card, [message(tx, first_offset + n, card.encode(), partition) for n, tx in enumerate(txs)]


def test_a_replay_longer_than_the_remembered_ids_counts_nothing_twice(
    scorer: BatchScorer,
    predictions: dict[bytes, bytes],
    cards: dict[bytes, bytes],
    stream: list[dict[str, Any]],
) -> None:
    """A crash before the first offset commit replays a card's whole history: more of its
    transactions than ``ids`` remembers (ID_CAP). Seen in the wiped-data-dir SIGKILL test as a
    card counted 72 times for 36 transactions."""
    card, records = card_history(stream, F.ID_CAP + 8, "replay", partition=1, first_offset=0)
    for start in range(0, len(records), 10):  # scored and stored in batches, as live
        apply(scorer.score(records[start : start + 10]), predictions, cards)
    assert stored_state(cards, card)["n"] == len(records)

    for start in range(0, len(records), 10):  # the replay: same records, same offsets
        replay = scorer.score(records[start : start + 10])
        assert replay.resent == len(records[start : start + 10])
        apply(replay, predictions, cards)

    assert stored_state(cards, card)["n"] == len(records)


def test_a_lost_state_write_is_still_repaired_after_a_long_history(
    scorer: BatchScorer,
    predictions: dict[bytes, bytes],
    cards: dict[bytes, bytes],
    stream: list[dict[str, Any]],
) -> None:
    """The offset rule must not hide the case the re-apply exists for: the last record's
    prediction persisted, its state write lost (the state is the one before it)."""
    card, records = card_history(stream, 40, "lost", partition=2, first_offset=100)
    apply(scorer.score(records[:39]), predictions, cards)
    last = scorer.score(records[39:])
    predictions.update({txid: verdict for _, txid, verdict in last.predictions})  # state lost
    assert stored_state(cards, card)["n"] == 39

    apply(scorer.score(records[39:]), predictions, cards)

    assert stored_state(cards, card)["n"] == 40


# --------------------------------------------------------------------------------- features


def expected_features(stream: list[dict[str, Any]]) -> Iterator[tuple[bytes, dict[str, float]]]:
    states: dict[str, F.CardState] = {}
    for tx in stream:
        state = states.get(tx["card_id"])
        yield (
            tx["transaction_id"].encode(),
            dict(zip(F.FEATURE_NAMES, F.features_for(tx, state), strict=True)),
        )
        states[tx["card_id"]] = F.apply_transaction(tx, state)


def test_features_equal_features_for_over_the_same_sequence(
    scorer: BatchScorer,
    predictions: dict[bytes, bytes],
    cards: dict[bytes, bytes],
    stream: list[dict[str, Any]],
) -> None:
    sent: dict[bytes, dict[str, float]] = {}
    for start in range(0, len(stream), 37):  # batches straddle cards: state crosses batch edges
        result = scorer.score(batch_of(stream[start : start + 37], start))
        apply(result, predictions, cards)
        sent.update((txid, orjson.loads(v)["features"]) for txid, v in result.verdicts)

    expected = dict(expected_features(stream))
    assert sent == expected
    assert max(row["card_tx_count"] for row in expected.values()) >= 3  # history was exercised


def test_score_matches_the_model_on_the_hand_computed_features(
    scorer: BatchScorer, model: ModelScorer, stream: list[dict[str, Any]]
) -> None:
    txs = stream[:30]
    rows = [list(features.values()) for _, features in expected_features(txs)]
    raw, probability = model.predict(np.asarray(rows))

    sent = verdicts(scorer.score(batch_of(txs)))

    assert [v["raw_score"] for v in sent] == raw.tolist()
    assert [v["score"] for v in sent] == probability.tolist()


def test_a_verdicts_replay_recomputes_its_features_and_score(
    scorer: BatchScorer,
    predictions: dict[bytes, bytes],
    cards: dict[bytes, bytes],
    stream: list[dict[str, Any]],
    models_dir: Path,
) -> None:
    """Issue 20: what a verdict carries is enough to recompute it. The transaction is rebuilt
    from the verdict alone (its copied fields + ``replay.device_id``), its features computed by
    the serving function from ``replay.card_state``, and scored by a Booster loaded from the
    registry's files: the verdict's features and score, exactly."""
    booster = current_booster(models_dir)
    sent: list[dict[str, Any]] = []
    for start in range(0, len(stream), 37):  # a card's transactions in one batch and across
        result = scorer.score(batch_of(stream[start : start + 37], start))
        apply(result, predictions, cards)
        sent += verdicts(result)
    rows, seen = [], 0
    for verdict in sent:
        tx = transaction_of(verdict)
        state = verdict["replay"]["card_state"]
        seen += state is not None and state["n"] > 0
        row = F.features_for(tx, state)
        assert [None if np.isnan(x) else x for x in row] == [verdict["features"][n] for n in F.FEATURE_NAMES]
        rows.append(row)
    matrix = np.asarray(rows)
    assert booster.predict(matrix, raw_score=True).tolist() == [v["raw_score"] for v in sent]
    assert booster.predict(matrix).tolist() == pytest.approx([v["score"] for v in sent], rel=1e-12, abs=0)
    assert seen >= 50  # most carried a history, not the empty state
    same_batch = Counter((i // 37, tx["card_id"]) for i, tx in enumerate(stream))
    assert max(same_batch.values()) >= 2  # a card twice in one batch: the state before each


# ------------------------------------------------------------------------------------ focus


def test_each_item_reads_the_rows_of_its_own_partition(
    model: ModelScorer, stream: list[dict[str, Any]]
) -> None:
    log: list[tuple[Any, ...]] = []
    predictions, cards = RecordingTable("predictions", log), RecordingTable("cards", log)
    scorer = BatchScorer(model, predictions, cards, DEFAULT_MAX_BYTES, FakeClock())
    txs = stream[:40]
    batch = [message(tx, i, tx["card_id"].encode(), partition=i % 4) for i, tx in enumerate(txs)]
    batch[5:5] = [Incoming(None, b"garbage", TOPIC, 0, 77)]
    copy = message(txs[0], 78, txs[0]["card_id"].encode(), partition=3)  # sent again, elsewhere
    batch.append(copy)

    scorer.score(batch)

    own = {("predictions", i % 4, tx["transaction_id"].encode()) for i, tx in enumerate(txs)}
    own |= {("cards", i % 4, tx["card_id"].encode()) for i, tx in enumerate(txs)}
    own.add(("cards", 3, txs[0]["card_id"].encode()))  # the copy's own partition (its state read)
    reads = {entry[1:] for entry in log}
    assert reads <= own, f"read under another item's partition: {sorted(reads - own)[:3]}"
    assert {r for r in own if r[0] == "predictions"} <= reads  # every prediction lookup was made
    first_card_reads = {(p, key) for name, p, key in reads if name == "cards"}
    for tx in txs:  # each card's state is read once, from its first item's partition
        first = next(j for j, other in enumerate(txs) if other["card_id"] == tx["card_id"])
        assert (first % 4, tx["card_id"].encode()) in first_card_reads, tx["card_id"]


def test_batch_counts_decisions_and_rejections_for_metrics(
    scorer: BatchScorer, stream: list[dict[str, Any]], predictions: dict[bytes, bytes]
) -> None:
    """What the scorer's Prometheus counters are fed: one decision per verdict, one reason per
    DLQ record, re-sends included."""
    good = stream[:20]
    batch = [message(tx, i, tx["card_id"].encode()) for i, tx in enumerate(good)]
    batch.append(Incoming(b"k", b"not json", TOPIC, 0, 99))
    result = scorer.score(batch)
    decisions = [orjson.loads(v)["decision"] for _, v in result.verdicts]
    assert result.decisions == {d: decisions.count(d) for d in set(decisions)}
    reasons = [orjson.loads(r)["reason_code"] for _, _, r in result.dlq]
    assert result.rejected == {r: 1 for r in reasons} and len(reasons) == 1
    predictions.update({txid: verdict for _, txid, verdict in result.predictions})  # as the agent does
    again = scorer.score([message(tx, 100 + i, tx["card_id"].encode()) for i, tx in enumerate(good[:5])])
    assert sum(again.decisions.values()) == 5 and again.resent == 5
