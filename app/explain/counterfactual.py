"""What would change the verdict: proposals that change one or two fields of a transaction.

Issue 20's second kind of explanation, the search itself (pure: no Kafka, no tables). For a deny
or review verdict it looks for changes a person can act on or check:

- the **amount**, lowered (the largest amount that gets the better decision);
- the **channel** (in person instead of online, or the other way);
- the **device**: one this card has used before;
- the **country**: the merchant's country equal to the card's home country.

Everything else (the card's history, velocity counts, merchant, time) is held fixed. Each
proposal is **verified, not estimated**: the changed transaction's features are recomputed with
the serving feature function (``features_for``) from the same card state the verdict used and
scored by the same model; the decision stated is the model's own. Smallest change first: one
field before two, then the smaller amount change; "approved" proposals before "review instead of
deny" ones.

How the amounts are found (a search guided by the model's own split thresholds): every
amount-derived feature (``amount``, ``log_amount``, ``amount_to_median``, ``amount_cents``,
``is_round_amount``) is a function of the amount alone once the card state is fixed, and the
booster compares each feature with its split thresholds only. So the score is constant on each
cell between consecutive boundaries (the thresholds mapped back to amounts: ``t``,
``expm1(t)``, ``t * median``) and of each class of cents (the ``amount_cents`` thresholds) and
of roundness. One candidate per cell below the original amount covers every amount a customer
could pay, to the cent; "at most X" is said only when every cell below X gets the decision.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np

from app.explain.splits import SplitIndex
from app.model.features import FEATURE_NAMES, card_median, features_for
from app.model.predictor import APPROVE, DENY, REVIEW, ModelScorer, decision

_RANK = {APPROVE: 0, REVIEW: 1, DENY: 2}

CHANNEL_WORDS = {"pos": "in person", "ecom": "online", "atm": "at an ATM"}
# Channels a purchase can be moved to (an ATM withdrawal is not the same purchase).
MOVABLE_CHANNELS = ("pos", "ecom")
MAX_PROPOSALS = 3
NO_PROPOSAL = "no change of these fields alone would approve it"

_AMOUNT_FEATURES = ("amount", "log_amount", "amount_to_median", "amount_cents", "is_round_amount")
_COLUMN = {name: i for i, name in enumerate(FEATURE_NAMES)}


@dataclass(frozen=True)
class Proposal:
    """One verified change: the fields changed, the model's decision and score for it."""

    changes: Mapping[str, Any]
    decision: str
    score: float
    text: str
    # With an amount: the amounts from ``amount_from`` up to the proposed one all get ``decision``
    # (``amount_from`` 0.01: "at most"); None: the proposed amount itself, not a range.
    amount_from: float | None = None

    def to_dict(self) -> dict[str, Any]:
        return {"changes": dict(self.changes), "decision": self.decision, "score": self.score,
                "text": self.text, "amount_from": self.amount_from}  # fmt: skip


@dataclass(frozen=True)
class Counterfactual:
    """The search's answer: up to ``MAX_PROPOSALS`` proposals, or a note saying there are none."""

    decision: str  # the verdict's decision, recomputed from the transaction and card state
    score: float
    proposals: tuple[Proposal, ...]
    candidates: int  # changed transactions scored
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (the ``counterfactual`` of a complete update of that kind)."""
        return {
            "decision": self.decision,
            "score": self.score,
            "proposals": [p.to_dict() for p in self.proposals],
            "candidates": self.candidates,
            "note": self.note,
        }


@dataclass
class _Move:
    """A change of the categorical fields (may be empty: the original transaction)."""

    changes: dict[str, Any] = field(default_factory=dict)
    words: list[str] = field(default_factory=list)


class CounterfactualSearch:
    """Proposals under one model version: ``scorer`` scores and decides exactly as the verdict
    was scored, ``splits`` are its split thresholds (``SplitIndex.from_booster(scorer.booster)``)."""

    def __init__(self, scorer: ModelScorer, splits: SplitIndex) -> None:
        self._scorer = scorer
        self._review, self._deny = scorer.thresholds["review"], scorer.thresholds["deny"]
        by_name = {f.name: f for f in splits.features}
        self._thresholds = {name: by_name[name].thresholds for name in _AMOUNT_FEATURES if name in by_name}

    def decide(self, probability: float) -> str:
        return decision(probability, self._review, self._deny)

    def search(self, tx: Mapping[str, Any], state: Mapping[str, Any] | None) -> Counterfactual:
        """Proposals for ``tx`` as scored from ``state`` (the card state before it)."""
        moves = self._moves(tx, state)  # the first: the transaction as it is
        bases = np.asarray([features_for({**tx, **move.changes}, state) for move in moves], dtype=np.float64)
        alone = self._probabilities(bases).tolist()
        original = alone[0]
        verdict = self.decide(original)
        if verdict == APPROVE:
            return Counterfactual(verdict, original, (), len(moves), note="approved already")
        median = card_median(state["am"]) if state and state["am"] else 0.0
        cells = self._amount_cells(round(float(tx["amount"]) * 100), median)
        amounts = np.asarray([amount for amount, _ in cells], dtype=np.int64)
        intervals = dict(cells)  # amount -> the (lo, hi] interval of its cell
        by_move: list[dict[int, float]] = []
        scored = len(moves)
        for move, base, probability in zip(moves, bases, alone, strict=True):
            # At most two fields: a lower amount goes with one other change at most; and none
            # where the change alone approves (a lower amount would not be the smaller change).
            approves = bool(move.changes) and self.decide(probability) == APPROVE
            tried = amounts if len(move.changes) < 2 and not approves else amounts[:0]
            scores = self._probabilities(amount_rows(base, tried, median)).tolist()
            scored += len(tried)
            by_move.append(dict(zip(tried.tolist(), scores, strict=True)))
        proposals = self._verified(tx, state, self._proposals(tx, verdict, moves, alone, by_move, intervals))
        note = None if any(p.decision == APPROVE for p in proposals) else NO_PROPOSAL
        return Counterfactual(verdict, original, tuple(proposals[:MAX_PROPOSALS]), scored, note)

    def _probabilities(self, rows: np.ndarray) -> np.ndarray:
        return self._scorer.predict(rows)[1]

    def _verified(
        self, tx: Mapping[str, Any], state: Mapping[str, Any] | None, proposals: list[Proposal]
    ) -> list[Proposal]:
        """Each proposal scored again the serving way (``features_for`` on the changed
        transaction): kept only if that gives the decision it states."""
        if not proposals:
            return []
        rows = np.asarray([features_for({**tx, **p.changes}, state) for p in proposals], dtype=np.float64)
        exact = self._probabilities(rows.reshape(len(proposals), len(FEATURE_NAMES))).tolist()
        return [p for p, score in zip(proposals, exact, strict=True) if self.decide(score) == p.decision]

    # -- candidates ---------------------------------------------------------------------------

    def _moves(self, tx: Mapping[str, Any], state: Mapping[str, Any] | None) -> list[_Move]:
        """The original, each categorical change alone, and each pair of them."""
        singles: list[_Move] = []
        channel = tx["channel"]
        if channel in MOVABLE_CHANNELS:
            for other in MOVABLE_CHANNELS:
                if other != channel:
                    words = f"made {CHANNEL_WORDS[other]} instead of {CHANNEL_WORDS[channel]}"
                    singles.append(_Move({"channel": other}, [words]))
        known = list(state["dv"]) if state else []
        if known and tx.get("device_id") not in known:
            singles.append(_Move({"device_id": known[-1]}, ["made on a device this card has used"]))
        if tx["country"] != tx["card_country"]:
            home = tx["card_country"]
            words = f"the merchant were in {home}, the card's home country, not {tx['country']}"
            singles.append(_Move({"country": home}, [words]))
        pairs = [_Move({**a.changes, **b.changes}, a.words + b.words) for a, b in combinations(singles, 2)]
        return [_Move(), *singles, *pairs]

    def _amount_cells(self, cents: int, median: float) -> list[tuple[int, tuple[int, int]]]:
        """(amount, its interval) for every cell of constant score below ``cents``: the largest
        amount (cents) of the cell. A cell is an interval (lo, hi] between consecutive boundaries
        (each threshold mapped to the largest amount that still compares ``<=`` it, and the cent
        below that), crossed with the cents classes of ``amount_cents`` and with roundness
        (``is_round_amount``). ``median``: the card's (``amount_to_median``), 0 when none."""
        mapped = [_cents_at_most(t) for t in self._thresholds.get("amount", ())]
        mapped += [_cents_at_most(math.expm1(t)) for t in self._thresholds.get("log_amount", ()) if t < 700]
        if median > 0:
            mapped += [_cents_at_most(t * median) for t in self._thresholds.get("amount_to_median", ())]
        edges = sorted({b + d for b in mapped for d in (-1, 0) if 1 <= b + d < cents})
        cent_thresholds = self._thresholds.get("amount_cents", ())
        cent_edges = sorted({min(99, math.floor(t)) for t in cent_thresholds if t >= 0})
        classes = list(zip([-1, *cent_edges], [*cent_edges, 99], strict=True))  # cents in (a, b]
        out: dict[int, tuple[int, int]] = {}
        for lo, hi in zip([0, *edges], [*edges, cents - 1], strict=True):
            if hi <= lo:
                continue
            candidates = [hi - hi % 1000]  # the round-ten cell
            for a, b in classes:  # the unround cell of each cents class
                c = _largest_with_cents_in(hi, a + 1, b)
                while c > lo and c % 1000 == 0:
                    c = _largest_with_cents_in(c - 1, a + 1, b)
                candidates.append(c)
            out.update((c, (lo, hi)) for c in candidates if c > lo)
        return sorted(out.items(), reverse=True)

    # -- choosing -----------------------------------------------------------------------------

    def _proposals(
        self,
        tx: Mapping[str, Any],
        verdict: str,
        moves: list[_Move],
        alone: Sequence[float],
        by_move: list[dict[int, float]],
        intervals: Mapping[int, tuple[int, int]],
    ) -> list[Proposal]:
        """Approve proposals, then (for a deny) "review instead" ones for the field sets that
        cannot approve; within each, fewer fields first, then the smaller amount change. A
        proposal whose fields include a smaller one's (same values) that already reached is left
        out, and so is a lower amount where the other fields alone reach."""
        found: list[tuple[tuple[int, int, float], Proposal]] = []
        reached: list[dict[str, Any]] = []
        original_cents = round(float(tx["amount"]) * 100)
        for target in [APPROVE] if verdict == REVIEW else [APPROVE, REVIEW]:
            for m, move in enumerate(moves):
                changes: dict[str, Any]
                amount: int | None = None
                amount_from: int | None = None
                if move.changes and self._reaches(alone[m], target):
                    changes, probability = dict(move.changes), alone[m]
                else:
                    scores = by_move[m]
                    hits = [a for a, score in scores.items() if self._reaches(score, target)]
                    if not hits:
                        continue
                    amount, amount_from = self._amount_range(max(hits), scores, intervals, target)
                    changes, probability = {**move.changes, "amount": amount / 100}, scores[amount]
                if _covered(changes, reached):
                    continue
                reached.append(changes)
                reduction = 0.0 if amount is None else 1 - amount / original_cents
                outcome = self.decide(probability)
                text = self._text(move.words, amount, amount_from, tx.get("currency", ""), outcome)
                start = None if amount_from is None else amount_from / 100
                found.append(((_RANK[target], len(changes), reduction),
                              Proposal(changes, outcome, float(probability), text, start)))  # fmt: skip
        found.sort(key=lambda item: item[0])
        return [proposal for _, proposal in found]

    def _amount_range(
        self, best: int, scores: Mapping[int, float], intervals: Mapping[int, tuple[int, int]], target: str
    ) -> tuple[int, int | None]:
        """(the amount to propose, the lowest amount of the range it heads, or None).

        When every cell of ``best``'s interval reaches ``target``, every amount of the interval
        does: the proposal is the interval's top, and the range runs down through the intervals
        below that are whole too. Otherwise only ``best`` itself is claimed."""
        whole: dict[tuple[int, int], bool] = {}
        for amount, score in scores.items():
            cell = intervals[amount]
            whole[cell] = whole.get(cell, True) and self._reaches(score, target)
        cell = intervals[best]
        if not whole[cell]:
            return best, None
        ordered = sorted(whole)  # intervals, lowest first; they tile (0, original)
        i = ordered.index(cell)
        while i > 0 and whole[ordered[i - 1]] and ordered[i - 1][1] == ordered[i][0]:
            i -= 1
        return cell[1], ordered[i][0] + 1

    def _reaches(self, probability: float, target: str) -> bool:
        return _RANK[self.decide(probability)] <= _RANK[target]

    @staticmethod
    def _text(words: list[str], amount: int | None, start: int | None, currency: str, outcome: str) -> str:
        parts = list(words)
        if amount is not None:
            top = f"{amount / 100:.2f} {currency}".strip()
            if start is None:
                parts.append(f"the amount were {top}")
            elif start <= 1:
                parts.append(f"the amount were at most {top}")
            else:
                parts.append(f"the amount were between {start / 100:.2f} and {top}")
        lead = "approved" if outcome == APPROVE else "review instead of deny"
        return f"{lead} if " + " and ".join(parts)


def _covered(changes: Mapping[str, Any], reached: list[dict[str, Any]]) -> bool:
    """Redundant: an earlier proposal changed a subset of these fields to the same values, or
    the amount by no more (a higher or equal amount)."""
    for r in reached:
        if set(r) <= set(changes) and all(
            changes[k] == v if k != "amount" else v >= changes[k] for k, v in r.items()
        ):
            return True
    return False


def _cents_at_most(value: float) -> int:
    """The largest whole number of cents whose amount is at most ``value`` (a threshold in
    amount space): the amount of that many cents compares ``<=`` the threshold."""
    if not math.isfinite(value):
        return 0 if value < 0 else 10**9
    cents = math.floor(value * 100)
    while cents / 100 > value:  # float rounding of cents / 100
        cents -= 1
    while (cents + 1) / 100 <= value:
        cents += 1
    return cents


def _largest_with_cents_in(hi: int, low: int, high: int) -> int:
    """The largest amount (cents) at most ``hi`` whose cents part is in ``low..high``."""
    whole, cents = divmod(hi, 100)
    if low <= cents <= high:
        return hi
    return whole * 100 + high if cents > high else (whole - 1) * 100 + high


def amount_rows(base: Sequence[float], amounts_cents: np.ndarray, median: float) -> np.ndarray:
    """``base`` (a feature row) repeated with each amount in turn: the five amount-derived
    features as ``features_for`` computes them (``_static_features`` and ``amount_to_median``),
    everything else as in ``base``. The search's fast path; every proposal is then scored again
    through ``features_for`` itself (``_verified``), and a unit test holds the two equal."""
    amount = amounts_cents.astype(np.float64) / 100
    rows = np.tile(np.asarray(base, dtype=np.float64), (len(amount), 1))
    cents = np.round(amount * 100)
    rows[:, _COLUMN["amount"]] = amount
    rows[:, _COLUMN["log_amount"]] = [math.log1p(a) for a in amount.tolist()]  # numpy's differs by an ulp
    rows[:, _COLUMN["amount_cents"]] = cents % 100
    rows[:, _COLUMN["is_round_amount"]] = (cents % 1000 == 0).astype(np.float64)
    rows[:, _COLUMN["amount_to_median"]] = amount / median if median > 0 else 1.0
    return rows
