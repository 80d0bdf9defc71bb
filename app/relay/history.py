"""The relay's own picture of the stream: recent transactions, the replay buffer, live figures.

Built only from the topics (``verdicts``, ``explanation.updates``), bounded in memory, touched
only from the event loop. Each ingested message becomes at most a few ``Event``s, serialised
once and shared by every client. Per transaction a verdict event always precedes its
explanation events: an update whose verdict has not been read yet (the two topics are fetched
independently) is held until the verdict arrives, or released alone after ``orphan_wait_s``.

Each kind of explanation (issue 20: ``contributions``, ``counterfactual``) has a status of its
own per transaction (``KindState``). Protocol 2 knows one status per transaction, the
contributions': its clients get no event and no snapshot field of another kind (``Event.kind``;
``TxState.as_message``); a protocol-3 client gets every kind's events, each naming its kind
(contributions' frames are the same bytes for both: no ``kind`` field means contributions, as on
the topic), and a verdict event that names the other kinds the explainer computes for it by
itself (``Event.frame3``: a second frame, only for such verdicts).
"""

from __future__ import annotations

import bisect
import statistics
from collections import Counter, OrderedDict, deque
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from app.explain.policy import PriorityRules
from app.records.kinds import CONTRIBUTIONS, COUNTERFACTUAL, kind_of
from app.records.masking import with_masked_card
from app.relay.protocol import (
    Filter,
    explanation_message,
    format_event_id,
    parse_event_id,
    verdict_message,
)

PRIORITIES = ("high", "normal", "low")
IN_FLIGHT = frozenset({"pending", "calculating"})
RATE_WINDOW_S = 5.0
GAP_WINDOW_S = 60.0


@dataclass(slots=True)
class Event:
    """One verdict or explanation event, ready to send (``frame``) and to filter."""

    seq: int
    event_id: str
    transaction_id: str
    decision: str | None
    priority: str | None
    frame: bytes
    kind: str = CONTRIBUTIONS  # an explanation event's kind; a verdict's is contributions (all see it)
    frame3: bytes | None = None  # the frame for protocol 3 where it differs (a verdict naming kinds)

    def frame_for(self, protocol: int) -> bytes:
        return self.frame3 if protocol >= 3 and self.frame3 is not None else self.frame


@dataclass(slots=True)
class KindState:
    """One kind of explanation of one transaction, as this relay knows it."""

    status: str = "unknown"
    explanation: dict[str, Any] | None = None  # the latest update
    event_id: str | None = None  # of the latest update's event
    flight_priority: str | None = None  # the queue an in-flight request sits in

    def as_message(self) -> dict[str, Any]:
        return {
            "status": self.status,
            "priority": None if self.explanation is None else self.explanation["priority"],
            "explanation": self.explanation,
            "explanation_event_id": self.event_id,
        }


@dataclass(slots=True)
class TxState:
    transaction_id: str
    verdict: dict[str, Any] | None = None
    verdict_event_id: str | None = None
    priority: str | None = None
    auto: bool | None = None
    kinds: dict[str, KindState] = field(default_factory=lambda: {CONTRIBUTIONS: KindState()})

    @property
    def decision(self) -> str | None:
        return None if self.verdict is None else self.verdict["decision"]

    def as_message(self, protocol: int = 2) -> dict[str, Any]:
        """Its snapshot entry: the contributions' status at the top (protocol 2); protocol 3 adds
        ``kinds``, every other kind this relay expects or has seen for it."""
        contributions = self.kinds[CONTRIBUTIONS]
        out = {
            "transaction_id": self.transaction_id,
            "status": contributions.status,
            "priority": self.priority,
            "explain": None if self.auto is None else ("auto" if self.auto else "on_demand"),
            "verdict": self.verdict,
            "verdict_event_id": self.verdict_event_id,
            "explanation": contributions.explanation,
            "explanation_event_id": contributions.event_id,
        }
        if protocol >= 3:
            out["kinds"] = {k: s.as_message() for k, s in self.kinds.items() if k != CONTRIBUTIONS}
        return out


def unknown_state(transaction_id: str, protocol: int = 2) -> dict[str, Any]:
    return TxState(transaction_id).as_message(protocol)


class ReplayBuffer:
    """The last ``capacity`` events, in sequence order with no holes (each event is appended)."""

    def __init__(self, capacity: int) -> None:
        self.events: deque[Event] = deque(maxlen=capacity)

    def append(self, event: Event) -> None:
        self.events.append(event)

    @property
    def oldest_event_id(self) -> str | None:
        return self.events[0].event_id if self.events else None

    def after(self, epoch: str, last_event_id: str) -> list[Event] | None:
        """Events after ``last_event_id``, or None when they cannot all be given (a gap)."""
        try:
            wanted_epoch, seq = parse_event_id(last_event_id)
        except ValueError:
            return None
        newest = self.events[-1].seq if self.events else 0
        if wanted_epoch != epoch or seq > newest:
            return None
        if seq == newest:
            return []
        first = self.events[0].seq
        if seq < first - 1:
            return None
        return list(self.events)[seq - first + 1 :]


@dataclass
class _Held:
    since: float
    updates: list[dict[str, Any]] = field(default_factory=list)


class RelayState:
    def __init__(
        self,
        epoch: str,
        rules: PriorityRules,
        *,
        state_max: int,
        replay_max: int,
        orphan_wait_s: float,
        held_max: int = 10_000,
    ) -> None:
        self.epoch, self.rules = epoch, rules
        self.state_max, self.orphan_wait_s, self.held_max = state_max, orphan_wait_s, held_max
        self.seq = 0
        self.txs: OrderedDict[str, TxState] = OrderedDict()
        self.replay = ReplayBuffer(replay_max)
        self.held: OrderedDict[str, _Held] = OrderedDict()
        self.in_flight: Counter[str] = Counter()
        self.verdict_times: deque[float] = deque()  # scored_at (epoch s) of recent verdicts
        self.gaps: deque[tuple[float, str, float]] = deque()  # (completed at, priority, ms)

    @property
    def last_event_id(self) -> str | None:
        return format_event_id(self.epoch, self.seq) if self.seq else None

    # -- ingest ---------------------------------------------------------------------------

    def ingest_verdict(self, verdict: dict[str, Any]) -> list[Event]:
        """Events of one verdict; its card id is masked here, so no frame or snapshot has it, and
        its ``replay`` (the card's devices, merchants and amounts: the explainer's input) left out."""
        # The explainer routes a counterfactual by itself only with the replay it needs.
        counterfactual = verdict.get("replay") is not None and self.rules.counterfactual(verdict) is not None
        verdict = with_masked_card(verdict)
        verdict.pop("replay", None)
        txid = str(verdict["transaction_id"])
        tx = self.txs.get(txid)
        if tx is not None and tx.verdict == verdict:
            return []  # the scorer re-sent the same verdict: nothing new to tell
        if tx is None:
            tx = self._new_tx(txid)
        priority = self.rules.priority(verdict)
        tx.verdict, tx.priority = verdict, priority
        tx.auto = self.rules.sampled(priority, txid)
        contributions = tx.kinds[CONTRIBUTIONS]
        if contributions.status == "unknown":
            self._set_status(contributions, "awaiting" if tx.auto else "sampled_out", None)
        if counterfactual:
            tx.kinds.setdefault(COUNTERFACTUAL, KindState("awaiting"))
        message = verdict_message(self._next_id(), verdict, priority, tx.auto)
        event = self._event(tx, message)
        if counterfactual:
            event.frame3 = orjson.dumps({**message, "kinds": [COUNTERFACTUAL]})
        tx.verdict_event_id = event.event_id
        self._note_verdict_time(verdict)
        events = [event]
        held = self.held.pop(txid, None)
        for update in held.updates if held else ():
            events += self._apply_update(tx, update)
        return events

    def ingest_update(self, update: dict[str, Any], now: float) -> list[Event]:
        txid = str(update["transaction_id"])
        tx = self.txs.get(txid)
        if tx is not None and tx.verdict is not None:
            return self._apply_update(tx, update)
        self.held.setdefault(txid, _Held(now)).updates.append(update)
        if len(self.held) > self.held_max:
            return self._release(next(iter(self.held)))
        return []

    def release_orphans(self, now: float) -> list[Event]:
        """Updates held past ``orphan_wait_s`` (their verdict is not coming) go out alone."""
        events: list[Event] = []
        while self.held:
            txid, held = next(iter(self.held.items()))
            if now - held.since < self.orphan_wait_s:
                break
            events += self._release(txid)
        return events

    def _release(self, txid: str) -> list[Event]:
        held = self.held.pop(txid)
        tx = self.txs.get(txid) or self._new_tx(txid)
        return [event for update in held.updates for event in self._apply_update(tx, update)]

    def _apply_update(self, tx: TxState, update: dict[str, Any]) -> list[Event]:
        kind = kind_of(update)
        state = tx.kinds.setdefault(kind, KindState())
        if state.explanation == update:
            return []  # re-sent (a worker re-announces a finished row on replay): nothing new
        self._set_status(state, str(update["status"]), str(update["priority"]))
        state.explanation = update
        if tx.priority is None:
            tx.priority = str(update["priority"])
        event = self._event(tx, explanation_message(self._next_id(), update, kind), kind)
        state.event_id = event.event_id
        if update["status"] == "complete" and kind == CONTRIBUTIONS:
            self._note_gap(update)
        return [event]

    def _new_tx(self, txid: str) -> TxState:
        tx = self.txs[txid] = TxState(txid)
        while len(self.txs) > self.state_max:
            _, evicted = self.txs.popitem(last=False)
            for state in evicted.kinds.values():
                self._set_status(state, "unknown", None)
        return tx

    def _set_status(self, state: KindState, status: str, priority: str | None) -> None:
        """In-flight counts are per queue, every kind together (the kinds share the queues)."""
        if state.status in IN_FLIGHT and state.flight_priority:
            self.in_flight[state.flight_priority] -= 1
        state.status, state.flight_priority = status, (priority if status in IN_FLIGHT else None)
        if state.flight_priority:
            self.in_flight[state.flight_priority] += 1

    def _next_id(self) -> str:
        self.seq += 1
        return format_event_id(self.epoch, self.seq)

    def _event(self, tx: TxState, message: dict[str, Any], kind: str = CONTRIBUTIONS) -> Event:
        frame = orjson.dumps(message)
        event = Event(self.seq, message["event_id"], tx.transaction_id, tx.decision, tx.priority, frame, kind)
        self.replay.append(event)
        return event

    # -- reading ---------------------------------------------------------------------------

    def snapshot_of(self, transaction_ids: Sequence[str], protocol: int = 2) -> list[dict[str, Any]]:
        out = []
        for txid in transaction_ids:
            tx = self.txs.get(txid)
            out.append(tx.as_message(protocol) if tx is not None else unknown_state(txid, protocol))
        return out

    def recent(self, wanted: Filter, limit: int, protocol: int = 2) -> list[dict[str, Any]]:
        """Up to ``limit`` most recent transactions matching ``wanted``, newest first."""
        out: list[dict[str, Any]] = []
        for tx in self._newest_first():
            if len(out) >= limit:
                break
            if wanted.matches(tx.transaction_id, tx.decision, tx.priority):
                out.append(tx.as_message(protocol))
        return out

    def _newest_first(self) -> Iterator[TxState]:
        return reversed(self.txs.values())

    # -- live figures ---------------------------------------------------------------------

    def _note_verdict_time(self, verdict: Mapping[str, Any]) -> None:
        try:
            scored = datetime.fromisoformat(verdict["scored_at"]).timestamp()
        except (KeyError, TypeError, ValueError):
            return
        bisect.insort(self.verdict_times, scored)

    def _note_gap(self, update: Mapping[str, Any]) -> None:
        timings = update.get("timings") or {}
        gap, completed = timings.get("verdict_to_complete_ms"), timings.get("completed_at")
        if gap is None or completed is None:
            return
        self.gaps.append((datetime.fromisoformat(completed).timestamp(), str(update["priority"]), float(gap)))

    def stats(self, now: float, clients: int) -> dict[str, Any]:
        """Figures for the console header; ``now`` is wall-clock seconds since the epoch."""
        while self.verdict_times and self.verdict_times[0] < now - RATE_WINDOW_S:
            self.verdict_times.popleft()
        while self.gaps and self.gaps[0][0] < now - GAP_WINDOW_S:
            self.gaps.popleft()
        by_priority: dict[str, list[float]] = {p: [] for p in PRIORITIES}
        for _, priority, gap in self.gaps:
            by_priority[priority].append(gap)
        return {
            "verdicts_per_s": round(len(self.verdict_times) / RATE_WINDOW_S, 2),
            "explanation_gap_ms": {p: gap_summary(values) for p, values in by_priority.items()},
            "in_flight": {p: max(0, self.in_flight[p]) for p in PRIORITIES},
            "clients": clients,
        }


def gap_summary(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"count": 0, "p50": None, "p95": None}
    if len(values) == 1:
        return {"count": 1, "p50": round(values[0], 1), "p95": round(values[0], 1)}
    cuts = statistics.quantiles(values, n=100, method="inclusive")
    return {"count": len(values), "p50": round(cuts[49], 1), "p95": round(cuts[94], 1)}
