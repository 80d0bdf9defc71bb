"""How sure the model is (issue 21): calibrated at training on a slice kept apart from the test.

Two kept libraries do the statistics, on the raw scores of the calibration slice (rows the
booster never fitted, early-stopped or chose thresholds on):

- **Venn-ABERS** (``venn-abers``, inductive): a probability interval ``[p0, p1]`` for a score,
  valid in the sense that the observed fraud frequency lies within it. Fitting (an isotonic
  regression per label) happens once, at training; its vectors are stored with the model
  version and serving is a ``searchsorted`` (the library's ``calc_probs``).
- **Mondrian conformal** (``crepes``), label-conditional: the p-value of each label is computed
  against the calibration scores of that label alone, so the coverage holds per class at the
  1.6 % fraud base rate (a pooled set would spend its errors on frauds). Non-smoothed p-values:
  deterministic (a replayed verdict gets the same set) and conservative.

A decision is *uncertain* when the interval of its score contains the calibrated probability of
the review or deny threshold (the thresholds are raw scores; their own Venn-ABERS point
probability is the boundary on the same scale as the interval).

Everything a scorer-side reader needs is in ``calibration.npz`` of the version's directory
(``app.model.registry``) and in the ``calibration`` section of its ``meta.json``.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any

import numpy as np

CALIBRATION_FILE = "calibration.npz"
LABELS = ("legitimate", "fraud")
METHOD = "venn_abers+mondrian_conformal"
REPORTED_CONFIDENCES = (0.9, 0.95, 0.99)
# Bins of the calibrated probability for the reliability table: fixed edges, dense where the
# frauds are rare (equal-count bins would put nine tenths of the rows, and no fraud, in nine
# bins), each merged with the next until it holds RELIABILITY_MIN_ROWS test rows (a frequency of
# 2 in 14 says little either way).
RELIABILITY_EDGES = (0.0, 0.001, 0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0)
RELIABILITY_MIN_ROWS = 100


@cache
def _venn_abers() -> Any:
    """The ``venn_abers`` module, imported without its import-time ``np.seterr`` (it silences
    division warnings process-wide; the explainer keeps numpy's defaults, and ``fit`` silences
    them only around the library's fit, whose divisions by zero are by design)."""
    saved = np.geterr()
    try:
        from venn_abers import venn_abers
    finally:
        np.seterr(**saved)
    return venn_abers


def _short(value: float) -> float:
    """Six significant digits: what a reader can use, a third of the bytes of a full repr (every
    contributions update carries these; the flag and the set are decided before rounding)."""
    return float(f"{value:.6g}")


def _two_columns(scores: np.ndarray) -> np.ndarray:
    """(legitimate, fraud) probabilities, the shape both libraries take."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    return np.column_stack([1.0 - scores, scores])


def _alphas(scores: np.ndarray) -> np.ndarray:
    """(n, 2) hinge non-conformity of each label: 1 - the probability of the label, i.e. the
    score for legitimate (exactly: ``1 - (1 - s)`` loses the smallest scores) and 1 - score."""
    scores = np.asarray(scores, dtype=np.float64).reshape(-1)
    return np.column_stack([scores, 1.0 - scores])


def in_set(p_values: np.ndarray, confidence: float) -> np.ndarray:
    """Which labels a conformal prediction set at ``confidence`` holds, from their p-values."""
    return p_values > 1.0 - confidence


def straddled(low: np.ndarray, high: np.ndarray, boundaries: Mapping[str, float]) -> dict[str, np.ndarray]:
    """Per threshold (review, deny): which intervals contain its calibrated probability — the
    definition of an uncertain decision."""
    return {name: (low <= boundaries[name]) & (boundaries[name] <= high) for name in ("review", "deny")}


@dataclass(frozen=True)
class Calibration:
    """The calibration slice's scores and labels, and the Venn-ABERS vectors fitted on them."""

    scores: np.ndarray  # raw scores of the calibration slice
    labels: np.ndarray  # 0 legitimate, 1 fraud
    p0: np.ndarray  # venn_abers' (c, isotonic value with label 0) pairs
    p1: np.ndarray
    c: np.ndarray  # the unique calibration scores, sorted

    @classmethod
    def fit(cls, scores: np.ndarray, labels: np.ndarray) -> Calibration:
        scores = np.asarray(scores, dtype=np.float64).reshape(-1)
        labels = np.asarray(labels, dtype=np.int8).reshape(-1)
        if len(scores) != len(labels):
            raise ValueError(f"{len(scores)} scores but {len(labels)} labels")
        for label, name in enumerate(LABELS):
            if not (labels == label).any():
                raise ValueError(f"the calibration slice holds no {name} row: cannot calibrate")
        # The library's own setting (and its all-NaN slices), scoped to its fit.
        with np.errstate(divide="ignore", invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            p0, p1, c = _venn_abers().calc_p0p1(_two_columns(scores), labels.astype(np.float64))
        return cls(scores, labels, np.asarray(p0), np.asarray(p1), np.asarray(c))

    # -- serving ---------------------------------------------------------------------------
    def intervals(self, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per score: (p0, p1, p) — the Venn-ABERS interval and its point probability."""
        p_prime, p0_p1 = _venn_abers().calc_probs(self.p0, self.p1, self.c, _two_columns(scores))
        return p0_p1[:, 0], p0_p1[:, 1], p_prime[:, 1]

    @cached_property
    def _sorted_alphas(self) -> tuple[np.ndarray, np.ndarray]:
        """Per label, its calibration rows' non-conformity scores (hinge: 1 - the probability of
        their own label), sorted: what a p-value counts."""
        alphas = _alphas(self.scores)[np.arange(len(self.labels)), self.labels]
        return np.sort(alphas[self.labels == 0]), np.sort(alphas[self.labels == 1])

    def p_values(self, scores: np.ndarray) -> np.ndarray:
        """(n, 2) label-conditional conformal p-values (legitimate, fraud), non-smoothed:
        ``(#calibration rows of the label with alpha >= the score's + 1) / (rows of the label + 1)``,
        crepes' formula counted with a binary search (crepes counts every calibration row per
        score: 4 ms for one score with 16,000 rows, ``bench.uncertainty``); ``conformal_p_values``
        is crepes itself, and a unit test holds the two equal."""
        alphas = _alphas(scores)
        out = np.empty_like(alphas)
        for label, ordered in enumerate(self._sorted_alphas):
            at_least = len(ordered) - np.searchsorted(ordered, alphas[:, label], side="left")
            out[:, label] = (at_least + 1) / (len(ordered) + 1)
        return out

    def conformal_p_values(self, scores: np.ndarray) -> np.ndarray:
        """``p_values`` computed by crepes (Mondrian by label): the reports' and tests' reference."""
        from crepes import ConformalClassifier

        alphas_cal = _alphas(self.scores)[np.arange(len(self.labels)), self.labels]
        conformal = ConformalClassifier().fit(alphas_cal, bins=self.labels)
        alphas = _alphas(scores)
        out = np.empty_like(alphas)
        for label in (0, 1):  # each label against its own calibration rows
            bins = np.full(len(alphas), label)
            out[:, label] = conformal.predict_p(alphas[:, [label]], bins=bins, smoothing=False)[:, 0]
        return out

    def prediction_sets(self, scores: np.ndarray, confidence: float) -> np.ndarray:
        """(n, 2) booleans: the labels the model cannot rule out at ``confidence``."""
        if not 0.0 < confidence < 1.0:
            raise ValueError(f"confidence must be within (0, 1), got {confidence}")
        return in_set(self.p_values(scores), confidence)

    def boundaries(self, thresholds: Mapping[str, float]) -> dict[str, float]:
        """Each raw threshold's calibrated probability: the boundary an interval may straddle."""
        names = sorted(thresholds)
        _, _, points = self.intervals(np.array([thresholds[name] for name in names]))
        return {name: float(point) for name, point in zip(names, points, strict=True)}

    def describe_many(
        self, scores: np.ndarray, boundaries: Mapping[str, float], confidence: float
    ) -> list[dict[str, Any]]:
        """The ``uncertainty`` of each score (``schemas/explanation.schema.json``; the method is
        ``METHOD``, named in the schema rather than in every update), in one pass over the
        array; ``boundaries`` from ``boundaries`` (computed once per model version)."""
        low, high, point = self.intervals(scores)
        p_values = self.p_values(scores)
        sets = in_set(p_values, confidence)
        held = straddled(low, high, boundaries)
        limits = {name: _short(value) for name, value in boundaries.items()}
        out = []
        for i in range(len(low)):
            straddles = [name for name, rows in held.items() if rows[i]]
            out.append({
                "probability": _short(point[i]),
                "interval": [_short(low[i]), _short(high[i])],
                "confidence": confidence,
                "prediction_set": [LABELS[j] for j in (0, 1) if sets[i, j]],
                "p_values": {LABELS[j]: _short(p_values[i, j]) for j in (0, 1)},
                "uncertain": bool(straddles),
                "straddles": straddles,
                "boundaries": dict(limits),
            })  # fmt: skip
        return out

    # -- storage ---------------------------------------------------------------------------
    def to_bytes(self) -> bytes:
        buffer = io.BytesIO()
        np.savez(buffer, scores=self.scores, labels=self.labels, p0=self.p0, p1=self.p1, c=self.c)
        return buffer.getvalue()

    @classmethod
    def load(cls, folder: Path) -> Calibration:
        with np.load(Path(folder) / CALIBRATION_FILE, allow_pickle=False) as stored:
            return cls(*(np.array(stored[name]) for name in ("scores", "labels", "p0", "p1", "c")))


def held_out_report(
    calibration: Calibration, scores: np.ndarray, labels: np.ndarray, thresholds: Mapping[str, float]
) -> dict[str, Any]:
    """What the calibration achieves on the test split (rows it never saw): conformal coverage
    per class at each reported confidence, and a reliability table of the Venn-ABERS intervals
    (``RELIABILITY_EDGES`` bins of the calibrated probability, merged up to
    ``RELIABILITY_MIN_ROWS``: the observed fraud frequency against the mean interval)."""
    labels = np.asarray(labels, dtype=np.int8)
    p_values = calibration.conformal_p_values(scores)  # crepes itself, not the serving lookup
    coverage = {}
    for confidence in REPORTED_CONFIDENCES:
        covered = in_set(p_values, confidence)[np.arange(len(labels)), labels]
        coverage[f"{confidence:g}"] = {
            name: float(covered[labels == i].mean()) if (labels == i).any() else None
            for i, name in enumerate(LABELS)
        }
    low, high, point = calibration.intervals(scores)
    bins = np.clip(np.searchsorted(RELIABILITY_EDGES, point, side="right") - 1, 0, len(RELIABILITY_EDGES) - 2)
    reliability: list[dict[str, Any]] = []
    first = 0  # the first fixed bin of the merged bin being filled
    for index in range(len(RELIABILITY_EDGES) - 1):
        members = (bins >= first) & (bins <= index)
        last = index == len(RELIABILITY_EDGES) - 2
        if members.sum() < RELIABILITY_MIN_ROWS and not last:
            continue
        if members.any():
            reliability.append(_reliability_bin(first, index, members, labels, low, high, point))
        first = index + 1
    uncertain = np.logical_or.reduce(list(straddled(low, high, calibration.boundaries(thresholds)).values()))
    return {
        "rows": len(labels),
        "frauds": int(labels.sum()),
        "coverage": coverage,
        "reliability": reliability,
        "uncertain_share": float(uncertain.mean()) if len(labels) else None,
        "interval_width_median": float(np.median(high - low)) if len(labels) else None,
    }


def _reliability_bin(
    first: int,
    last: int,
    members: np.ndarray,
    labels: np.ndarray,
    low: np.ndarray,
    high: np.ndarray,
    point: np.ndarray,
) -> dict[str, Any]:
    """One row of the reliability table; ``consistent``: the observed frequency's Wilson 95 %
    interval meets the mean Venn-ABERS interval (``inside`` asks for the frequency itself)."""
    from scipy.stats import binomtest

    rows, frauds = int(members.sum()), int(labels[members].sum())
    observed, mean_p0, mean_p1 = frauds / rows, float(low[members].mean()), float(high[members].mean())
    wilson = binomtest(frauds, rows).proportion_ci(confidence_level=0.95, method="wilson")
    wilson_low, wilson_high = float(wilson.low), float(wilson.high)
    return {
        "bin": [RELIABILITY_EDGES[first], RELIABILITY_EDGES[last + 1]],
        "rows": rows,
        "frauds": frauds,
        "mean_probability": float(point[members].mean()),
        "mean_p0": mean_p0,
        "mean_p1": mean_p1,
        "observed": observed,
        "observed_wilson_95": [wilson_low, wilson_high],
        "inside": mean_p0 <= observed <= mean_p1,
        "consistent": wilson_low <= mean_p1 and mean_p0 <= wilson_high,
    }
