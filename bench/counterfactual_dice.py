"""dice-ml on the raw-field pipeline: the baseline issue 20 asks the split-guided search to be
measured against (``python -m bench.counterfactual --compare``).

The model dice-ml sees takes the transaction's actionable raw fields (amount, channel, device,
merchant country) and returns the serving model's probability for the changed transaction
computed from the same card state: ``features_for`` once per combination of the categorical
fields, the amount-derived features patched per row (``amount_rows``, held equal to
``features_for`` by a unit test), so dice-ml pays for the same fast pipeline as the search.
dice-ml's classes are 0/1 at 0.5; the probability is mapped monotonically so that 0.5 is the
review threshold (class 0 = approve). Every counterfactual it returns is scored again through
``features_for`` (the same check as the search's ``_verified``); only verified ones count.

Methods (dice-ml 0.12):

- ``dice-random``: random sampling, the model-agnostic method; private data (the ranges of the
  fields: amount in [0.01, the amount], the categories the search also tries).
- ``dice-genetic``: the genetic method, which needs training data (its population starts from
  a k-d tree of labelled rows): per verdict, a frame of the candidate transactions (``--dice-rows``
  amounts below the original, drawn from the generator's amounts, crossed with the categories)
  labelled by the model. Its random initialisation instead loops until it has drawn enough
  valid rows, without end when there are none (dice_genetic.py ``do_random_init``), and the k-d
  tree start falls back on it when the frame holds fewer approved rows than the population: each
  call has a CPU budget (``--dice-budget``, 5 s), and a call over it counts as no proposal.
"""

from __future__ import annotations

import contextlib
import io
import logging
import signal
import warnings
from collections.abc import Mapping, Sequence
from itertools import product
from typing import Any

import numpy as np
from raiutils.exceptions import UserConfigValidationException

from app.explain.counterfactual import MOVABLE_CHANNELS, amount_rows
from app.model.features import card_median, features_for
from app.model.predictor import APPROVE, ModelScorer

METHODS = ("dice-random", "dice-genetic")
_CATEGORICAL = ("channel", "device_id", "country")
_NONE = "-"  # dice-ml's categories are strings: a transaction without a device


class _OverBudget(Exception):
    """A dice-ml call used its CPU budget (``DiceBaseline.budget_s``)."""


def _over_budget(signum: int, frame: Any) -> None:
    raise _OverBudget


class _RawFieldModel:
    """sklearn-style model over the raw fields of one transaction, from one card state."""

    def __init__(self, scorer: ModelScorer, tx: Mapping[str, Any], state: Mapping[str, Any] | None) -> None:
        self.scorer, self.tx, self.state = scorer, tx, state
        self.median = card_median(state["am"]) if state and state["am"] else 0.0
        self.review = scorer.thresholds["review"]
        self.rows = 0

    def probability(self, frame: Any) -> np.ndarray:
        out = np.empty(len(frame))
        amounts = frame["amount"].to_numpy(dtype=np.float64)
        for combo, index in frame.groupby(list(_CATEGORICAL), sort=False).indices.items():
            changes = dict(zip(_CATEGORICAL, combo, strict=True))
            changes["device_id"] = None if changes["device_id"] == _NONE else changes["device_id"]
            base = features_for({**self.tx, **changes}, self.state)
            cents = np.round(amounts[index] * 100).astype(np.int64)
            out[index] = self.scorer.predict(amount_rows(base, cents, self.median))[1]
        self.rows += len(frame)
        return out

    def predict_proba(self, frame: Any) -> np.ndarray:
        p, r = self.probability(frame), self.review
        q = np.where(p < r, 0.5 * p / r, 0.5 + 0.5 * (p - r) / (1 - r))  # approve <=> q < 0.5
        return np.column_stack([1 - q, q])

    def predict(self, frame: Any) -> np.ndarray:
        return (self.predict_proba(frame)[:, 1] >= 0.5).astype(int)


def domains(tx: Mapping[str, Any], state: Mapping[str, Any] | None) -> dict[str, list[str]]:
    """The values each categorical field may take: the ones the split-guided search tries."""
    channel = tx["channel"]
    known = [str(d) for d in (state["dv"] if state else [])]
    return {
        "channel": sorted({channel, *MOVABLE_CHANNELS}) if channel in MOVABLE_CHANNELS else [channel],
        "device_id": sorted({_device(tx), *known}),
        "country": sorted({tx["country"], tx["card_country"]}),
    }


def _device(tx: Mapping[str, Any]) -> str:
    device = tx.get("device_id")
    return _NONE if device is None else str(device)


class DiceBaseline:
    """Counterfactuals from dice-ml for one model: ``search(tx, state)`` -> verified changes."""

    def __init__(
        self,
        scorer: ModelScorer,
        method: str,
        background_amounts: Sequence[float],
        rows: int = 400,
        seed: int = 5,
        budget_s: float = 5.0,
    ) -> None:
        if method not in METHODS:
            raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
        import dice_ml  # a dev dependency: only this comparison uses it

        self.dice_ml, self.scorer, self.method = dice_ml, scorer, method
        self.background = np.asarray(background_amounts, dtype=np.float64)
        self.rows, self.rng = rows, np.random.default_rng(seed)
        self.budget_s = budget_s
        signal.signal(signal.SIGVTALRM, _over_budget)
        logging.getLogger("dice_ml").setLevel(logging.ERROR)

    def search(
        self, tx: Mapping[str, Any], state: Mapping[str, Any] | None, total: int = 3
    ) -> dict[str, Any]:
        """{"proposals": [changes, ...] verified to approve, "returned": n, "rows": scored}."""
        import pandas as pd

        model = _RawFieldModel(self.scorer, tx, state)
        fields = domains(tx, state)
        query = pd.DataFrame([{"amount": float(tx["amount"]), "channel": tx["channel"],
                               "device_id": _device(tx), "country": tx["country"]}])  # fmt: skip
        vary = ["amount", *(f for f in _CATEGORICAL if len(fields[f]) > 1)]
        if self.method == "dice-random":
            data = self.dice_ml.Data(
                features={"amount": [0.01, float(tx["amount"])], **fields},
                outcome_name="fraud",
                continuous_features_precision={"amount": 2},
            )
            kwargs: dict[str, Any] = {"random_seed": int(self.rng.integers(1 << 30))}
        else:
            frame = self._frame(tx, fields, model)
            data = self.dice_ml.Data(dataframe=frame, continuous_features=["amount"], outcome_name="fraud")
            kwargs = {"permitted_range": {"amount": [0.01, float(tx["amount"])]}}
        dice = self.dice_ml.Dice(
            data, self.dice_ml.Model(model=model, backend="sklearn", model_type="classifier"),
            method=self.method.removeprefix("dice-"),
        )  # fmt: skip
        found: list[dict[str, Any]] = []
        error = None
        with (
            warnings.catch_warnings(),
            contextlib.redirect_stdout(io.StringIO()),
            contextlib.redirect_stderr(io.StringIO()),
        ):
            warnings.simplefilter("ignore")
            signal.setitimer(signal.ITIMER_VIRTUAL, self.budget_s)  # dice's own loops may not end
            try:
                result = dice.generate_counterfactuals(
                    query, total_CFs=total, desired_class=0, features_to_vary=vary, verbose=False, **kwargs
                )
                cfs = result.cf_examples_list[0].final_cfs_df
            except UserConfigValidationException:
                cfs = None  # "no counterfactuals found"
            except ValueError as exc:  # dice_genetic.py: "empty range for randrange()" (a small population)
                cfs, error = None, f"{type(exc).__name__}: {exc}"
            except _OverBudget:
                cfs, error = None, f"over the CPU budget of {self.budget_s:g} s"
            finally:
                signal.setitimer(signal.ITIMER_VIRTUAL, 0)
        for row in [] if cfs is None else cfs.to_dict("records"):
            changes = self._changes(tx, row)
            if changes:
                found.append(changes)
        verified = [c for c in found if self._approves(tx, state, c)]
        return {"proposals": verified, "returned": len(found), "rows": model.rows, "error": error}

    def _frame(self, tx: Mapping[str, Any], fields: Mapping[str, list[str]], model: _RawFieldModel) -> Any:
        """The labelled rows the genetic method starts from: amounts below the original drawn
        from the background amounts, crossed with every combination of the categories."""
        import pandas as pd

        below = self.background[self.background < float(tx["amount"])]
        pool = below if len(below) else np.asarray([0.01])
        combos = list(product(*(fields[f] for f in _CATEGORICAL)))
        amounts = self.rng.choice(pool, size=max(1, self.rows // len(combos)))
        records = [
            {"amount": float(a), **dict(zip(_CATEGORICAL, c, strict=True))} for c in combos for a in amounts
        ]
        records.append({"amount": float(tx["amount"]), "channel": tx["channel"],
                        "device_id": _device(tx), "country": tx["country"]})  # fmt: skip
        frame = pd.DataFrame(records)
        frame["fraud"] = (model.predict_proba(frame)[:, 1] >= 0.5).astype(int)
        return frame

    @staticmethod
    def _changes(tx: Mapping[str, Any], row: Mapping[str, Any]) -> dict[str, Any]:
        changes: dict[str, Any] = {}
        amount = round(float(row["amount"]), 2)
        if amount < round(float(tx["amount"]), 2):
            changes["amount"] = amount
        for name in _CATEGORICAL:
            value = None if row[name] == _NONE else row[name]
            if value != tx.get(name):
                changes[name] = value
        return changes

    def _approves(
        self, tx: Mapping[str, Any], state: Mapping[str, Any] | None, changes: Mapping[str, Any]
    ) -> bool:
        row = np.asarray([features_for({**tx, **changes}, state)], dtype=np.float64)
        return self.scorer.decide(self.scorer.predict(row)[1])[0] == APPROVE
