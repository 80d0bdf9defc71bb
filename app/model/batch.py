"""The critical path as plain functions: validate → features → predict → verdict.

No Kafka here: the scorer's loop feeds batches of :class:`Incoming` and applies the returned
:class:`BatchResult` (table writes first, then sends, in that order — see ``apply`` in
:mod:`app.scorer.loop` for why the order matters after a crash).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

import numpy as np
import orjson

from app.model import features as feature_fns
from app.model.predictor import ModelScorer
from app.records.contracts import format_utc
from app.records.validation import (
    DEFAULT_DLQ_KEY_PREFIX,
    DEFAULT_DLQ_VALUE_PREFIX,
    InvalidInput,
    build_dlq_record,
    dlq_key,
    validate_transaction,
)


class Readable(Protocol):
    """What the scorer reads of a table: a row of one partition's store
    (:class:`app.kafka.local_table.LocalTable`; an in-memory table in unit tests)."""

    def get(self, partition: int, key: bytes, /) -> bytes | None: ...


@dataclass(frozen=True)
class Incoming:
    key: bytes | None
    value: bytes | None
    topic: str
    partition: int
    offset: int


@dataclass
class BatchResult:
    """What one batch asks of the tables and topics, in the order it must happen."""

    predictions: list[tuple[int, bytes, bytes]] = field(default_factory=list)  # (index, txid, verdict)
    card_states: dict[bytes, tuple[int, bytes]] = field(default_factory=dict)  # card → (index, state)
    verdicts: list[tuple[bytes, bytes]] = field(default_factory=list)  # (txid, verdict)
    # (index of the rejected item, its key cut to the DLQ key bound, the DLQ record)
    dlq: list[tuple[int, bytes | None, bytes]] = field(default_factory=list)
    resent: int = 0
    decisions: Counter[str] = field(default_factory=Counter)  # verdicts of the batch, by decision
    rejected: Counter[str] = field(default_factory=Counter)  # DLQ records of the batch, by reason code


# A transaction to score: (its index in the batch, the transaction, its features, the card state
# they were computed from).
_Fresh = tuple[int, dict[str, Any], list[float], dict[str, Any] | None]


@dataclass
class _Batch:
    """One batch in progress: its result, and the card states it read or changed."""

    result: BatchResult = field(default_factory=BatchResult)
    states: dict[bytes, dict[str, Any]] = field(default_factory=dict)
    touched: dict[bytes, int] = field(default_factory=dict)  # card → index of its last transaction


class BatchScorer:
    """Scores batches against two readable tables; the caller writes what the result asks."""

    def __init__(
        self,
        model: ModelScorer,
        predictions: Readable,
        card_activity: Readable,
        max_message_bytes: int,
        clock: Callable[[], float],
        dlq_value_prefix_bytes: int = DEFAULT_DLQ_VALUE_PREFIX,
        dlq_key_prefix_bytes: int = DEFAULT_DLQ_KEY_PREFIX,
    ) -> None:
        self.dlq_value_prefix_bytes, self.dlq_key_prefix_bytes = dlq_value_prefix_bytes, dlq_key_prefix_bytes
        self.model = model
        self.predictions = predictions
        self.card_activity = card_activity
        self.max_message_bytes = max_message_bytes
        self.clock = clock

    def score(self, batch: Sequence[Incoming]) -> BatchResult:
        """Score a batch; each item reads the tables' rows of its own partition."""
        now = self.clock()
        work = _Batch()
        fresh: list[_Fresh] = []
        seen_in_batch: set[bytes] = set()
        in_batch_copies: list[bytes] = []
        for index, item in enumerate(batch):
            tx = self._validated(index, item, now, work.result)
            if tx is None:
                continue
            txid, card = tx["transaction_id"].encode(), tx["card_id"].encode()
            state = self._state(work, item.partition, card)
            if txid in seen_in_batch:  # sent again after the first copy is scored
                in_batch_copies.append(txid)
                continue
            source = (item.partition, item.offset)
            stored = self.predictions.get(item.partition, txid)
            if stored is not None:
                self._resend(work, index, tx, source, state, stored)
                continue
            seen_in_batch.add(txid)
            fresh.append((index, tx, feature_fns.features_for(tx, state), state))
            work.states[card] = feature_fns.apply_transaction(tx, state, source)
            work.touched[card] = index
        result = work.result
        self._predict(fresh, now, result)
        if in_batch_copies:
            scored = {txid: verdict for _, txid, verdict in result.predictions}
            for txid in in_batch_copies:
                result.verdicts.append((txid, scored[txid]))
                result.decisions[orjson.loads(scored[txid])["decision"]] += 1
                result.resent += 1
        result.card_states = {
            card: (index, orjson.dumps(work.states[card])) for card, index in work.touched.items()
        }
        return result

    def _validated(
        self, index: int, item: Incoming, now: float, result: BatchResult
    ) -> dict[str, Any] | None:
        try:
            tx = validate_transaction(item.value, self.max_message_bytes)
            if item.key is not None and item.key != tx["card_id"].encode():
                raise InvalidInput(
                    "wrong_key",
                    f"message key {item.key[:64]!r} is not the card_id {tx['card_id']!r}; "
                    "transactions must be keyed by card_id",
                    transaction_id=tx["transaction_id"],
                )
            return tx
        except InvalidInput as exc:
            result.rejected[exc.code] += 1
            record = build_dlq_record(
                item.value,
                item.key,
                exc,
                item.topic,
                item.partition,
                item.offset,
                datetime.fromtimestamp(now, UTC),
                value_prefix_bytes=self.dlq_value_prefix_bytes,
                key_prefix_bytes=self.dlq_key_prefix_bytes,
            )
            key = dlq_key(item.key, self.dlq_key_prefix_bytes)
            result.dlq.append((index, key, orjson.dumps(record)))
            return None

    def _state(self, work: _Batch, partition: int, card: bytes) -> dict[str, Any] | None:
        if card not in work.states:
            raw = self.card_activity.get(partition, card)
            if raw is None:
                return None
            work.states[card] = orjson.loads(raw)
        return work.states[card]

    def _resend(
        self,
        work: _Batch,
        index: int,
        tx: dict[str, Any],
        source: tuple[int, int],
        state: dict[str, Any] | None,
        stored: bytes,
    ) -> None:
        """A transaction seen before: the stored verdict again, never a second score.

        The stored rows are written again: after a crash the local store can hold writes whose
        changelog records were lost, and the changelog must catch up before the verdict leaves.
        """
        txid, card = tx["transaction_id"].encode(), tx["card_id"].encode()
        result = work.result
        result.predictions.append((index, txid, stored))
        result.verdicts.append((txid, stored))
        result.decisions[str(orjson.loads(stored).get("decision"))] += 1
        result.resent += 1
        if not feature_fns.applied(state, tx["transaction_id"], source):
            # A crash lost the state write but not the prediction: bring the state up to date.
            state = feature_fns.apply_transaction(tx, state, source)
        if state is not None:
            work.states[card] = state
            work.touched[card] = index

    def _predict(self, fresh: list[_Fresh], now: float, result: BatchResult) -> None:
        if not fresh:
            return
        matrix = np.asarray([row for _, _, row, _ in fresh], dtype=np.float64)
        raw_scores, probabilities = self.model.predict(matrix)
        decisions = self.model.decide(probabilities)
        received = format_utc(datetime.fromtimestamp(now, UTC))
        scored = format_utc(datetime.fromtimestamp(self.clock(), UTC))
        names = self.model.feature_names
        for (index, tx, row, state), raw, prob, decision in zip(
            fresh, raw_scores, probabilities, decisions, strict=True
        ):
            verdict = build_verdict(
                tx, row, names, float(raw), float(prob), decision, self.model, received, scored, state
            )
            txid = tx["transaction_id"].encode()
            encoded = orjson.dumps(verdict)
            result.decisions[decision] += 1
            result.predictions.append((index, txid, encoded))
            result.verdicts.append((txid, encoded))


def build_verdict(
    tx: dict[str, Any],
    row: list[float],
    names: Sequence[str],
    raw_score: float,
    probability: float,
    decision: str,
    model: ModelScorer,
    received_at: str,
    scored_at: str,
    state: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The verdict record (``schemas/verdict.schema.json``). ``replay`` carries what the
    features were computed from besides the copied fields: the device and the card's state
    before the transaction (``features_state``), so an explainer recomputes them exactly
    (counterfactuals); the relay leaves it out of what browsers get."""
    return {
        "transaction_id": tx["transaction_id"],
        "card_id": tx["card_id"],
        "decision": decision,
        "score": probability,
        "raw_score": raw_score,
        "model_version": model.version,
        "features": dict(zip(names, row, strict=True)),
        "thresholds": dict(model.thresholds),
        "event_time": tx["timestamp"],
        "received_at": received_at,
        "scored_at": scored_at,
        "amount": tx["amount"],
        "currency": tx["currency"],
        "channel": tx["channel"],
        "country": tx["country"],
        "card_country": tx["card_country"],
        "mcc": tx["mcc"],
        "merchant_id": tx["merchant_id"],
        "replay": {"device_id": tx.get("device_id"), "card_state": feature_fns.features_state(state)},
    }
