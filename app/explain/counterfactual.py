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
could pay, to the cent. Only the thresholds the transaction can still reach count: with every
other feature fixed, each tree follows one branch at its other nodes (``Forest.reachable``), so
the rest are never compared, whatever the amount (a third of the cells of all thresholds, and
0.28× the CPU: ``python -m bench.counterfactual_ab``, DESIGN-NOTES). A range ("at most X",
"between Y and X") is the whole unbroken run of amounts below X, to the cent, that get the
decision: it stops at the first amount whose cell does not.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import numpy as np

from app.explain.splits import Forest, SplitIndex
from app.model.features import FEATURE_NAMES, card_median, features_for
from app.model.predictor import APPROVE, DENY, REVIEW, ModelScorer, decision

_RANK = {APPROVE: 0, REVIEW: 1, DENY: 2}

CHANNEL_WORDS = {"pos": "in person", "ecom": "online", "atm": "at an ATM"}
# Channels a purchase can be moved to (an ATM withdrawal is not the same purchase).
MOVABLE_CHANNELS = ("pos", "ecom")
MAX_PROPOSALS = 3
# the decisions a proposal may reach, per verdict: approve, and for a deny "review instead"
_TARGETS = {REVIEW: (APPROVE,), DENY: (APPROVE, REVIEW)}
_FIRST_CHUNK = 256  # cells scored at first from the top; doubled at each step down
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


@dataclass(frozen=True)
class _Cells:
    """The candidate amounts of one move: the largest amount (cents) of each cell of constant
    score, its interval (index into ``lo``/``hi``: (lo, hi], ascending, tiling (0, original))
    and its cents class (index into ``classes``: cents ``low..high``; -1: the round tens)."""

    amounts: np.ndarray
    interval: np.ndarray
    klass: np.ndarray
    lo: np.ndarray
    hi: np.ndarray
    classes: np.ndarray

    def amount_range(self, best: int, reaches: np.ndarray) -> tuple[int, int | None]:
        """(the amount of candidate ``best``, the lowest amount of the unbroken run of amounts
        below it that all reach, or None when it is alone): downwards from ``best``, cent by
        cent, until an amount whose cell does not reach (``reaches``, per candidate)."""
        top = int(self.amounts[best])
        bottom, i = top, int(self.interval[best])
        while True:
            lo = int(self.lo[i])
            failing = np.flatnonzero((self.interval == i) & ~reaches)
            # the largest amount below ``bottom`` in each failing cell of this interval
            highest = max((self._largest_below(bottom, int(self.klass[j])) for j in failing), default=lo)
            if highest > lo:
                bottom = highest + 1
                break
            bottom = lo + 1  # all of (lo, bottom] reaches: on to the interval below, if any
            if i == 0 or int(self.hi[i - 1]) != lo:
                break
            i -= 1
        return top, (bottom if bottom < top else None)

    def _largest_below(self, bottom: int, klass: int) -> int:
        """The largest amount below ``bottom`` of cents class ``klass`` (unround), or round tens."""
        if klass < 0:
            return (bottom - 1) - (bottom - 1) % 1000
        low, high = self.classes[klass]
        return int(_largest_unround_with_cents_in(np.int64(bottom - 1), low, high))


_NONE = np.zeros(0, dtype=np.int64)
_NO_CELLS = _Cells(_NONE, _NONE, _NONE, _NONE, _NONE, np.zeros((0, 2), dtype=np.int64))


@dataclass(frozen=True)
class _Scored:
    """One move's candidate amounts and the probability the model gives each."""

    cells: _Cells
    scores: np.ndarray


class CounterfactualSearch:
    """Proposals under one model version: ``scorer`` scores and decides exactly as the verdict
    was scored, ``splits`` are its split thresholds (``SplitIndex.from_booster(scorer.booster)``)."""

    def __init__(self, scorer: ModelScorer, splits: SplitIndex) -> None:
        self._scorer = scorer
        self._review, self._deny = scorer.thresholds["review"], scorer.thresholds["deny"]
        # ``decision``'s rule as the probability below which a decision is at least ``target``
        self._ceiling = {APPROVE: self._review, REVIEW: self._deny, DENY: math.inf}
        by_name = {f.name: f for f in splits.features}
        self._thresholds = {name: by_name[name].thresholds for name in _AMOUNT_FEATURES if name in by_name}
        self._forest = Forest.from_booster(scorer.booster)
        # The features the amount moves; without a card median ``amount_to_median`` stays 1.0.
        self._free = np.zeros(len(FEATURE_NAMES), dtype=bool)
        self._free[[_COLUMN[name] for name in _AMOUNT_FEATURES]] = True
        self._free_without_median = self._free.copy()
        self._free_without_median[_COLUMN["amount_to_median"]] = False

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
        cents = round(float(tx["amount"]) * 100)
        by_move: list[_Scored] = []
        scored = len(moves)
        ceilings = [self._ceiling[target] for target in _TARGETS[verdict]]
        for move, base, probability in zip(moves, bases, alone, strict=True):
            # At most two fields: a lower amount goes with one other change at most; and none
            # where the change alone approves (a lower amount would not be the smaller change).
            approves = bool(move.changes) and self.decide(probability) == APPROVE
            cells = (
                _NO_CELLS if len(move.changes) >= 2 or approves else self._amount_cells(cents, median, base)
            )
            scores = self._score_from_the_top(base, cells, median, ceilings)
            scored += int(np.count_nonzero(~np.isnan(scores)))
            by_move.append(_Scored(cells, scores))
        proposals = self._verified(tx, state, self._proposals(tx, verdict, moves, alone, by_move))
        note = None if any(p.decision == APPROVE for p in proposals) else NO_PROPOSAL
        return Counterfactual(verdict, original, tuple(proposals[:MAX_PROPOSALS]), scored, note)

    def _probabilities(self, rows: np.ndarray) -> np.ndarray:
        return self._scorer.predict(rows)[1]

    def _score_from_the_top(
        self, base: np.ndarray, cells: _Cells, median: float, ceilings: Sequence[float]
    ) -> np.ndarray:
        """The probability of each cell (NaN: not scored), scored whole intervals at a time from
        the highest amount down, until what ``_proposals`` reads is known for every ceiling: the
        highest cell below it and the unbroken run under that cell, which ends at the first
        interval below with a cell that does not reach (``_Cells.amount_range``). The smallest
        change is near the original amount: 1,337 candidate rows per search instead of 4,438.5
        (medians) and 0.44× the CPU, most of it LightGBM's predict (``python -m
        bench.counterfactual_ab``, DESIGN-NOTES)."""
        scores = np.full(len(cells.amounts), np.nan)
        end, chunk = len(cells.amounts), _FIRST_CHUNK
        while end > 0:
            # cells are in ascending interval order: start at the first cell of an interval
            start = int(np.searchsorted(cells.interval, cells.interval[max(0, end - chunk)]))
            scores[start:end] = self._probabilities(amount_rows(base, cells.amounts[start:end], median))
            end, chunk = start, chunk * 2
            if all(_settled(cells, scores, end, ceiling) for ceiling in ceilings):
                break
        return scores

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

    def _reachable_thresholds(self, base: np.ndarray, median: float) -> Mapping[str, Any]:
        """The amount features' thresholds on the nodes ``base`` (a feature row) can still reach
        when only its amount changes (``Forest.reachable``); every threshold when not known."""
        nodes = self._forest.reachable(base, self._free if median > 0 else self._free_without_median)
        if nodes is None:
            return self._thresholds
        features, thresholds = self._forest.feature[nodes], self._forest.threshold[nodes]
        return {name: np.unique(thresholds[features == _COLUMN[name]]) for name in _AMOUNT_FEATURES}

    def _amount_cells(self, cents: int, median: float, base: np.ndarray) -> _Cells:
        """Every cell of constant score below ``cents``, each by its largest amount (cents). A
        cell is an interval (lo, hi] between consecutive boundaries (each threshold mapped to the
        largest amount that still compares ``<=`` it, and the cent below that), crossed with the
        cents classes of ``amount_cents`` and with roundness (``is_round_amount``). Only the
        thresholds ``base`` can still reach count: the others are never compared, whatever the
        amount. ``median``: the card's (``amount_to_median``), 0 when none."""
        reachable = self._reachable_thresholds(base, median)
        mapped = [_cents_at_most(t) for t in reachable.get("amount", ())]
        mapped += [_cents_at_most(math.expm1(t)) for t in reachable.get("log_amount", ()) if t < 700]
        if median > 0:
            mapped += [_cents_at_most(t * median) for t in reachable.get("amount_to_median", ())]
        edges = sorted({b + d for b in mapped for d in (-1, 0) if 1 <= b + d < cents})
        cent_edges = sorted({min(99, math.floor(t)) for t in reachable.get("amount_cents", ()) if t >= 0})
        bounds = zip([0, *(e + 1 for e in cent_edges)], [*cent_edges, 99], strict=True)
        classes = np.asarray([(a, b) for a, b in bounds if a <= b], dtype=np.int64).reshape(-1, 2)
        lo, hi = np.asarray([0, *edges], dtype=np.int64), np.asarray([*edges, cents - 1], dtype=np.int64)
        keep = hi > lo
        lo, hi = lo[keep], hi[keep]
        # the round-ten cell of each interval, then the unround cell of each cents class
        rounds = hi - hi % 1000
        low, high = classes[:, 0][None, :], classes[:, 1][None, :]
        unround = _largest_unround_with_cents_in(hi[:, None], low, high)
        amounts = np.concatenate([rounds[:, None], unround], axis=1)
        interval = np.broadcast_to(np.arange(len(hi))[:, None], amounts.shape)
        klass = np.broadcast_to(np.arange(-1, len(classes))[None, :], amounts.shape)
        inside = amounts > lo[:, None]
        return _Cells(amounts[inside], interval[inside], klass[inside], lo, hi, classes)

    # -- choosing -----------------------------------------------------------------------------

    def _proposals(
        self,
        tx: Mapping[str, Any],
        verdict: str,
        moves: list[_Move],
        alone: Sequence[float],
        by_move: list[_Scored],
    ) -> list[Proposal]:
        """Approve proposals, then (for a deny) "review instead of deny" ones for the field sets
        that cannot approve; within each, fewer fields first, then the smaller amount change. A
        proposal whose fields include a smaller one's (same values) that already reached is left
        out, and so is a lower amount where the other fields alone reach."""
        found: list[tuple[tuple[int, int, float], Proposal]] = []
        reached: list[dict[str, Any]] = []
        original_cents = round(float(tx["amount"]) * 100)
        for target in _TARGETS[verdict]:
            below = self._ceiling[target]
            for m, move in enumerate(moves):
                changes: dict[str, Any]
                amount: int | None = None
                amount_from: int | None = None
                if move.changes and self._reaches(alone[m], target):
                    changes, probability = dict(move.changes), alone[m]
                else:
                    cells, scores = by_move[m].cells, by_move[m].scores
                    reaches = scores < below
                    if not reaches.any():
                        continue
                    best = _highest(cells.amounts, reaches)
                    amount, amount_from = cells.amount_range(best, reaches)
                    changes, probability = {**move.changes, "amount": amount / 100}, float(scores[best])
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

    def _reaches(self, probability: float, target: str) -> bool:
        return probability < self._ceiling[target]

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


def _settled(cells: _Cells, scores: np.ndarray, end: int, ceiling: float) -> bool:
    """Whether the cells scored (``end`` on, whole intervals) hold the highest cell below
    ``ceiling`` and an interval under it with a cell that is not: nothing below matters."""
    reaches = scores[end:] < ceiling
    if not reaches.any():
        return False
    interval = cells.interval[end:]
    best = int(interval[_highest(cells.amounts[end:], reaches)])
    return bool(np.any((interval < best) & ~reaches))


def _highest(amounts: np.ndarray, reaches: np.ndarray) -> int:
    """The index of the highest amount among those that reach (at least one does)."""
    return int(np.flatnonzero(reaches)[np.argmax(amounts[reaches])])


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


def _largest_with_cents_in(hi: Any, low: Any, high: Any) -> Any:
    """The largest amount (cents) at most ``hi`` whose cents part is in ``low..high`` (numbers or
    arrays, broadcast)."""
    whole, cents = np.divmod(hi, 100)
    below = np.where(cents > high, whole * 100 + high, (whole - 1) * 100 + high)
    return np.where((low <= cents) & (cents <= high), hi, below)


def _largest_unround_with_cents_in(hi: Any, low: Any, high: Any) -> Any:
    """The same, not a round ten (``is_round_amount``): the one below it when it is (at most one
    step: the amount below a round ten with cents in the class is never one)."""
    amount = _largest_with_cents_in(hi, low, high)
    return np.where(amount % 1000 == 0, _largest_with_cents_in(amount - 1, low, high), amount)


def amount_rows(base: Sequence[float] | np.ndarray, amounts_cents: np.ndarray, median: float) -> np.ndarray:
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
