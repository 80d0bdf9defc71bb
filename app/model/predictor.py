"""Load a registered model once and score feature matrices with it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import lightgbm as lgb
import numpy as np

from app.model.features import FEATURE_NAMES
from app.model.registry import MODEL_FILE, Registry, RegistryError

APPROVE, REVIEW, DENY = "approve", "review", "deny"


class IncompatibleModelError(RegistryError):
    """The model was trained on a different feature list than this code computes."""


def sigmoid(raw: np.ndarray) -> np.ndarray:
    """Numerically stable logistic function (no overflow for large |raw|)."""
    exp_neg_abs = np.exp(-np.abs(raw))
    out: np.ndarray = np.where(raw >= 0, 1.0 / (1.0 + exp_neg_abs), exp_neg_abs / (1.0 + exp_neg_abs))
    return out


def decision(probability: float, review: float, deny: float) -> str:
    """The verdict's rule: deny at or above ``deny``, review at or above ``review``, else approve."""
    if probability >= deny:
        return DENY
    return REVIEW if probability >= review else APPROVE


class ModelScorer:
    """One registered model version, loaded once, single-threaded predictions."""

    def __init__(
        self, root: Path, version: str | None = None, expected_features: Sequence[str] | None = FEATURE_NAMES
    ) -> None:
        registry = Registry(root)
        resolved = version or registry.current()
        if resolved is None:
            raise RegistryError(f"no version given and no CURRENT model in {root}")
        meta = registry.load_meta(resolved)
        self._version = resolved
        self._feature_names: tuple[str, ...] = tuple(meta["feature_names"])
        self._review = float(meta["thresholds"]["review"])
        self._deny = float(meta["thresholds"]["deny"])
        if expected_features is not None and tuple(expected_features) != self._feature_names:
            raise IncompatibleModelError(
                f"model {resolved} expects features {self._feature_names}, "
                f"this code computes {tuple(expected_features)}"
            )
        # Predictions use one thread (``num_threads=1`` on each call: a loaded
        # model ignores constructor params): the scorer shares the host with
        # other workers and per-batch matrices are tiny.
        model_file = registry.path(resolved) / MODEL_FILE
        self._booster = lgb.Booster(model_file=str(model_file))
        if self._booster.num_feature() != len(self._feature_names):
            raise IncompatibleModelError(f"model {resolved}: meta.json and model.txt disagree")

    @property
    def version(self) -> str:
        return self._version

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self._feature_names

    @property
    def booster(self) -> lgb.Booster:
        """The loaded model (read it, e.g. for its split thresholds; predict through ``predict``)."""
        return self._booster

    @property
    def thresholds(self) -> dict[str, float]:
        return {"review": self._review, "deny": self._deny}

    def predict(self, matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(raw log-odds, fraud probability) for each row of ``matrix``."""
        rows = np.asarray(matrix, dtype=np.float64)
        if rows.ndim == 1:
            rows = rows.reshape(1, -1)
        if rows.shape[0] == 0:  # LightGBM rejects an empty matrix
            empty = np.zeros(0, dtype=np.float64)
            return empty, empty.copy()
        raw = np.asarray(self._booster.predict(rows, raw_score=True, num_threads=1))
        return raw, sigmoid(raw)

    def decide(self, probability: np.ndarray | Sequence[float] | float) -> list[str]:
        """approve / review / deny per probability (``decision``)."""
        values = np.atleast_1d(np.asarray(probability, dtype=np.float64)).tolist()
        return [decision(p, self._review, self._deny) for p in values]
