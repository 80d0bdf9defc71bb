"""Train the LightGBM fraud model and register it.

Data is either generated (``rows`` labelled transactions from ``seed``) or read
from a CSV of contract fields plus a label column.  Features come from
``build_matrix``, i.e. the very functions the live scorer calls.  The split is
by time: the first 80 % trains (its last fifth is the early-stopping and
threshold-selection slice); of the last 20 %, held out, the first 8 % of all rows calibrate
the uncertainty (``app.model.calibration``, issue 21) and the last 12 % are the test of the
reported metrics — the model and its thresholds never see either.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
from tqdm import tqdm

from app.model.calibration import METHOD as CALIBRATION_METHOD
from app.model.calibration import Calibration, held_out_report
from app.model.features import FEATURE_NAMES, build_matrix, parse_ts_ms
from app.model.generator import generate
from app.model.reference import ReferenceSet
from app.model.registry import Registry

CONTRACT_FIELDS: tuple[str, ...] = (
    "transaction_id", "card_id", "timestamp", "amount", "currency", "merchant_id",
    "mcc", "country", "card_country", "channel", "device_id",
)  # fmt: skip
DEFAULT_LABEL = "is_fraud"
PATTERN_COLUMN = "fraud_pattern"  # optional: the fraud pattern a similar case shows
MAX_ROUNDS = 300
EARLY_STOPPING_ROUNDS = 30
DENY_PRECISION = 0.9
DENY_TOP_SHARE = 0.005
REVIEW_TOP_SHARE = 0.03
MIN_DENY_SUPPORT = 10
CALIBRATION_SHARE = 0.08  # of all rows, right after the training rows
REFERENCE_ROWS = 20_000  # the similar cases' reference set, at most
_TRUE = frozenset({"1", "true", "t", "yes", "y"})
_FALSE = frozenset({"0", "false", "f", "no", "n"})


def lgb_params(seed: int) -> dict[str, Any]:
    """Booster parameters; deterministic given the seed and thread count."""
    return {
        "objective": "binary",
        "metric": "binary_logloss",
        "learning_rate": 0.05,
        "num_leaves": 63,
        "min_data_in_leaf": 40,
        "feature_fraction": 0.9,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "lambda_l2": 1.0,
        "num_threads": 2,
        "deterministic": True,
        "force_row_wise": True,  # fixed histogram layout: reproducible models
        "seed": seed,
        "verbose": -1,
    }


@dataclass(frozen=True)
class RegisteredModel:
    """What ``train`` produced and where it lives."""

    version: str
    path: Path
    thresholds: dict[str, float]
    metrics: dict[str, float]
    best_iteration: int
    is_current: bool


# ------------------------------------------------------------------- metrics
def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties get average ranks)."""
    y = np.asarray(labels, dtype=bool)
    positives, negatives = int(y.sum()), int((~y).sum())
    if positives == 0 or negatives == 0:
        return float("nan")
    _, inverse, counts = np.unique(scores, return_inverse=True, return_counts=True)
    average_rank = np.cumsum(counts) - (counts - 1) / 2.0
    ranks = average_rank[inverse]
    rank_sum = float(ranks[y].sum())
    return (rank_sum - positives * (positives + 1) / 2.0) / (positives * negatives)


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """PR-AUC as average precision (step-wise, like scikit-learn)."""
    y = np.asarray(labels, dtype=np.float64)
    positives = y.sum()
    if positives == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores), kind="mergesort")
    ranked, y = np.asarray(scores)[order], y[order]
    cuts = np.r_[np.flatnonzero(np.diff(ranked)), len(ranked) - 1]  # tie ends
    tp = np.cumsum(y)[cuts]
    precision = tp / (cuts + 1)
    recall = tp / positives
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def choose_thresholds(scores: np.ndarray, labels: np.ndarray) -> dict[str, float]:
    """``deny``: lowest cut with precision >= 0.9 (else the top 0.5 %);
    ``review``: the top 3 % of scores, always strictly below ``deny``."""
    order = np.argsort(-scores, kind="mergesort")
    ranked, y = scores[order], labels[order].astype(np.float64)
    n = len(ranked)
    taken = np.arange(1, n + 1)
    precision = np.cumsum(y) / taken
    cut_here = np.r_[ranked[:-1] > ranked[1:], True]  # never split tied scores
    ok = np.flatnonzero((precision >= DENY_PRECISION) & cut_here & (np.cumsum(y) >= MIN_DENY_SUPPORT))
    top = max(1, math.ceil(DENY_TOP_SHARE * n))
    deny = float(ranked[ok[-1]] if ok.size else ranked[top - 1])
    review = float(ranked[min(n, max(1, math.ceil(REVIEW_TOP_SHARE * n))) - 1])
    if review >= deny:
        review = deny / 2.0  # keep a review band even when deny is wide
    return {"review": max(review, 1e-9), "deny": min(deny, 1.0)}


# ---------------------------------------------------------------------- data
def load_csv(path: Path, label: str) -> tuple[list[dict[str, Any]], np.ndarray]:
    """Transactions (contract dicts) and 0/1 labels from a CSV file."""
    txs, labels, _ = load_csv_with_patterns(path, label)
    return txs, labels


def load_csv_with_patterns(
    path: Path, label: str
) -> tuple[list[dict[str, Any]], np.ndarray, list[str | None]]:
    """``load_csv`` and the optional ``fraud_pattern`` column (empty cell: none named)."""
    frame = pd.read_csv(path, dtype=str, keep_default_na=False)
    missing = [c for c in (*CONTRACT_FIELDS, label) if c not in frame.columns]
    if missing:
        raise ValueError(f"{path}: missing columns {missing}")
    raw_labels = frame[label].str.strip().str.lower()
    unknown = sorted(set(raw_labels) - _TRUE - _FALSE)
    if unknown:
        raise ValueError(f"{path}: label {label!r} has values {unknown[:5]}")
    records = frame[list(CONTRACT_FIELDS)].to_dict("records")
    for record in records:
        record["amount"] = float(record["amount"])
        record["device_id"] = record["device_id"] or None  # empty cell = null
    named = frame[PATTERN_COLUMN] if PATTERN_COLUMN in frame.columns else [""] * len(frame)
    patterns = [str(p).strip()[:60] or None for p in named]
    return records, raw_labels.isin(_TRUE).to_numpy(dtype=np.int8), patterns


def load_labelled(
    rows: int, seed: int, data: Path | None, label: str | None, progress: bool
) -> tuple[list[dict[str, Any]], np.ndarray, str]:
    """Time-ordered transactions, labels and a description of the source."""
    txs, labels, source, _ = load_labelled_with_patterns(rows, seed, data, label, progress)
    return txs, labels, source


def load_labelled_with_patterns(
    rows: int, seed: int, data: Path | None, label: str | None, progress: bool
) -> tuple[list[dict[str, Any]], np.ndarray, str, list[str | None]]:
    """``load_labelled`` and each row's fraud pattern where the data names one (the generator's,
    or a CSV's ``fraud_pattern`` column): what a similar case shows beside its outcome."""
    if data is None:
        stream = tqdm(generate(rows, seed), total=rows, desc="generate", unit="tx", disable=not progress)
        items = list(stream)
        labels = np.fromiter((i.is_fraud for i in items), dtype=np.int8, count=len(items))
        patterns = [i.pattern for i in items]
        return [i.transaction for i in items], labels, f"generator(seed={seed})", patterns
    txs, labels, named = load_csv_with_patterns(Path(data), label or DEFAULT_LABEL)
    order = np.argsort(np.array([parse_ts_ms(t["timestamp"]) for t in txs]), kind="stable")
    return [txs[i] for i in order], labels[order], str(data), [named[i] for i in order]


def split_points(n: int) -> tuple[int, int, int]:
    """(end of the fitting rows, end of the training rows, end of the calibration rows) for
    ``n`` rows; the test rows follow the calibration rows."""
    train_end = int(n * 0.8)
    return int(train_end * 0.8), train_end, train_end + int(n * CALIBRATION_SHARE)


# ------------------------------------------------------------------ training
class _BoostingProgress:
    """LightGBM callback advancing a tqdm bar once per boosting round."""

    order = 100

    def __init__(self, bar: tqdm[Any]) -> None:
        self.bar = bar

    def __call__(self, env: lgb.callback.CallbackEnv) -> None:
        self.bar.update(1)


def fit_booster(
    matrix: np.ndarray, labels: np.ndarray, fit_end: int, train_end: int, seed: int, progress: bool
) -> lgb.Booster:
    """Boost on ``[:fit_end]``, early-stop on ``[fit_end:train_end]``."""
    names = list(FEATURE_NAMES)
    fit_set = lgb.Dataset(matrix[:fit_end], labels[:fit_end], feature_name=names, free_raw_data=False)
    val_set = fit_set.create_valid(matrix[fit_end:train_end], labels[fit_end:train_end])
    with tqdm(total=MAX_ROUNDS, desc="boosting", unit="tree", disable=not progress) as bar:
        callbacks: list[Callable[..., None]] = [
            lgb.early_stopping(EARLY_STOPPING_ROUNDS, verbose=False),
            _BoostingProgress(bar),
        ]
        booster = lgb.train(lgb_params(seed), fit_set, MAX_ROUNDS, valid_sets=[val_set], callbacks=callbacks)
        bar.total = bar.n  # early stopping ends before MAX_ROUNDS: close the bar at 100 %
    return booster


def evaluate(labels: np.ndarray, scores: np.ndarray) -> dict[str, float]:
    return {
        "roc_auc": roc_auc(labels, scores),
        "pr_auc": average_precision(labels, scores),
        "base_rate": float(np.mean(labels)) if len(labels) else float("nan"),
    }


def train(
    rows: int = 200_000,
    seed: int = 7,
    data: Path | None = None,
    label: str | None = None,
    *,
    registry_dir: Path,
    progress: bool = True,
    make_current: bool = True,
    reference_rows: int = REFERENCE_ROWS,
) -> RegisteredModel:
    """Build data and features, fit, evaluate on held-out time, register."""
    txs, labels, source, patterns = load_labelled_with_patterns(rows, seed, data, label, progress)
    matrix, _ = build_matrix(txs, progress=progress)
    fit_end, train_end, calibration_end = split_points(len(txs))
    if fit_end == 0 or calibration_end >= len(txs) or labels[:fit_end].sum() == 0:
        raise ValueError(f"not enough data to train: {len(txs)} rows, {int(labels.sum())} positive")
    if labels[train_end:calibration_end].sum() == 0:
        raise ValueError(
            f"not enough data to calibrate: no fraud in the calibration rows {train_end}..{calibration_end}"
        )
    booster = fit_booster(matrix, labels, fit_end, train_end, seed, progress)
    best = booster.best_iteration or booster.current_iteration()
    val_scores = booster.predict(matrix[fit_end:train_end], num_iteration=best)
    thresholds = choose_thresholds(np.asarray(val_scores), labels[fit_end:train_end])
    calibration_scores = np.asarray(booster.predict(matrix[train_end:calibration_end], num_iteration=best))
    calibration = Calibration.fit(calibration_scores, labels[train_end:calibration_end])
    test_scores = np.asarray(booster.predict(matrix[calibration_end:], num_iteration=best))
    metrics: dict[str, float] = {
        **evaluate(labels[calibration_end:], test_scores),
        "rows_train": train_end,
        "rows_calibration": calibration_end - train_end,
        "rows_test": len(txs) - calibration_end,
    }
    held_out = held_out_report(calibration, test_scores, labels[calibration_end:], thresholds)
    calibration_meta = {
        "method": CALIBRATION_METHOD,
        "rows": calibration_end - train_end,
        "frauds": int(labels[train_end:calibration_end].sum()),
        "boundaries": calibration.boundaries(thresholds),
        "held_out": held_out,
    }
    summary = _summary(len(txs), seed, source, best, fit_end, train_end)
    registry = Registry(registry_dir)
    version = registry.register(
        booster, FEATURE_NAMES, thresholds, metrics, summary, make_current, calibration, calibration_meta
    )
    # Similar cases: the most recent labelled rows held out of the fit, before the test (the end
    # of the validation slice and the calibration slice). Their SHAP vectors cost about 3 ms
    # CPU a row (docs/model.md), hence the bound.
    held = slice(max(fit_end, calibration_end - reference_rows), calibration_end)
    if progress:
        print(f"similar cases: SHAP vectors of {held.stop - held.start:,} reference rows …", flush=True)
    save_reference(
        registry, version, (txs, labels, patterns, matrix), held, f"{source}, rows before the test"
    )
    _report(metrics, thresholds, version, test_scores, held_out)
    return RegisteredModel(
        version, registry.path(version), thresholds, metrics, best, registry.current() == version
    )


def _summary(rows: int, seed: int, source: str, best: int, fit_end: int, train_end: int) -> dict[str, Any]:
    return {
        "rows": rows,
        "seed": seed,
        "source": source,
        "created_at": datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z"),
        "lightgbm_version": lgb.__version__,
        "params": lgb_params(seed),
        "best_iteration": best,
        "rows_fit": fit_end,
        "rows_validation": train_end - fit_end,
    }


def _report(
    metrics: Mapping[str, float],
    thresholds: Mapping[str, float],
    version: str,
    scores: np.ndarray,
    held_out: Mapping[str, Any],
) -> None:
    deny_share = float(np.mean(scores >= thresholds["deny"]))
    review_share = float(np.mean(scores >= thresholds["review"])) - deny_share
    print(
        f"held-out ({int(metrics['rows_test'])} rows): ROC-AUC {metrics['roc_auc']:.4f}  "
        f"PR-AUC {metrics['pr_auc']:.4f}  fraud base rate {metrics['base_rate']:.4%}"
    )
    print(
        f"thresholds: review >= {thresholds['review']:.4f} ({review_share:.2%} of held-out), "
        f"deny >= {thresholds['deny']:.4f} ({deny_share:.2%})"
    )
    coverage = held_out["coverage"]["0.95"]
    print(
        f"calibration ({int(metrics['rows_calibration'])} rows): conformal coverage at 95% on the test: "
        + ", ".join(f"{name} {_share(value)}" for name, value in coverage.items())
        + f"; uncertain {_share(held_out['uncertain_share'])} of the test"
    )
    print(f"registered model version {version}")


def _share(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"


def save_reference(
    registry: Registry,
    version: str,
    data: tuple[list[dict[str, Any]], np.ndarray, list[str | None], np.ndarray],
    kept: slice,
    origin: str,
) -> dict[str, Any]:
    """Store the ``kept`` rows of ``data`` (transactions, labels, patterns, feature matrix) as the
    version's similar cases, their SHAP vectors from the contributions kind's own code
    (``Explainer.contributions``, tree method); returns the summary ``meta.json`` gets."""
    from app.explain.core import Explainer  # the explain layer sits above this one

    txs, labels, patterns, matrix = data
    shap_values, _ = Explainer(registry.root, version, num_threads=2).contributions(matrix[kept])
    reference = ReferenceSet.build(shap_values, labels[kept], txs[kept], patterns[kept])
    summary = {
        "source": f"{origin}: {len(reference):,}",
        "rows": len(reference),
        "frauds": int(reference.labels.sum()),
        "space": "shap",
    }
    registry.save_reference(version, reference, summary)
    return summary


def build_reference(
    registry_dir: Path, version: str, data: Path, label: str | None, rows: int = REFERENCE_ROWS
) -> dict[str, Any]:
    """``fraudlens models reference``: the version's similar cases from a labelled CSV of the
    user's own past transactions (the most recent ``rows``; features built over the whole file,
    in time order, so each row sees its card's history as the scorer would)."""
    registry = Registry(registry_dir)
    registry.path(version)  # raises UnknownModelVersion before the file is read
    txs, labels, source, patterns = load_labelled_with_patterns(0, 0, data, label, progress=False)
    if not txs:
        raise ValueError(f"{data}: no rows")
    matrix, _ = build_matrix(txs)
    kept = slice(max(0, len(txs) - rows), len(txs))
    return save_reference(
        registry, version, (txs, labels, patterns, matrix), kept, f"{source}, most recent rows"
    )
