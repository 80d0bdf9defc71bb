"""SHAP explanations of one registered model version: values, top reasons, additivity, signatures.

Pure model code (no Kafka): the explainer agents call ``ExplainerCache.get(version)`` and
``Explainer.explain_batch`` from a worker thread or process.

Methods, both in log-odds (the booster's raw score):

``tree``
    Path-dependent TreeSHAP.  ``shap.TreeExplainer(booster)`` forwards a LightGBM booster to
    ``booster.predict(pred_contrib=True)``, so this calls that directly: identical values, no
    shap import.
``interventional``
    ``shap.TreeExplainer(booster, data=background, feature_perturbation="interventional")``
    against a background sample of training rows (``app.explain.background``).  Inputs go
    through ``SplitIndex.shap_inputs`` first: shap's interventional code compares against
    float32 thresholds and would route some real rows (e.g. an amount of 56.16) differently
    from LightGBM.  It also keeps leaf values in float32, which costs up to ~5e-7 of the 1e-6
    additivity budget on a 190-tree model.

Every explanation is checked: base value + Σ contributions must equal the booster's raw score
within ``ADDITIVITY_TOLERANCE``; otherwise ``Explanation.failure`` says by how much.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, TypedDict

import lightgbm as lgb
import numpy as np

from app.explain.background import DEFAULT_BACKGROUND_ROWS, DEFAULT_POOL_ROWS, DEFAULT_SEED, background_sample
from app.explain.counterfactual import Counterfactual, CounterfactualSearch
from app.explain.reasons import reason
from app.explain.splits import SplitIndex, UnsupportedModel
from app.model.features import FEATURE_NAMES
from app.model.predictor import ModelScorer
from app.model.reference import Neighbours
from app.model.registry import MODEL_FILE, Registry, RegistryError

Method = Literal["tree", "interventional"]
METHODS: tuple[Method, ...] = ("tree", "interventional")
UNITS = "log-odds"
ADDITIVITY_TOLERANCE = 1e-6
TOP_N = 3


class TopFeature(TypedDict):
    feature: str
    value: float | None  # None: the booster saw NaN
    contribution: float
    reason: str


@dataclass(frozen=True, slots=True)
class Explanation:
    """Why one row got its raw score, feature by feature."""

    model_version: str
    method: str
    base_value: float
    raw_score: float
    contributions: dict[str, float]
    top_features: list[TopFeature]
    failure: str | None = None  # set when the additivity check failed
    units: str = UNITS

    @property
    def ok(self) -> bool:
        return self.failure is None

    @property
    def additivity_residual(self) -> float:
        """base + Σ contributions - raw score (exactly rounded sum)."""
        return math.fsum([self.base_value, *self.contributions.values(), -self.raw_score])

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready fields, as in a complete ``explanation.updates`` message."""
        return {
            "model_version": self.model_version,
            "method": self.method,
            "units": self.units,
            "base_value": self.base_value,
            "raw_score": self.raw_score,
            "contributions": dict(self.contributions),
            "top_features": [dict(top) for top in self.top_features],
            "additivity_residual": self.additivity_residual,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Explanation:
        """Inverse of ``to_dict`` (e.g. an ``explanation_cache`` value); re-runs the check."""
        contributions = {str(k): float(v) for k, v in data["contributions"].items()}
        base, raw = float(data["base_value"]), float(data["raw_score"])
        return cls(
            model_version=str(data["model_version"]),
            method=str(data["method"]),
            base_value=base,
            raw_score=raw,
            contributions=contributions,
            top_features=[_top_feature(top) for top in data["top_features"]],
            failure=additivity_error(base, contributions.values(), raw),
        )


def _top_feature(data: Mapping[str, Any]) -> TopFeature:
    value = data["value"]
    return TopFeature(
        feature=str(data["feature"]),
        value=None if value is None else float(value),
        contribution=float(data["contribution"]),
        reason=str(data["reason"]),
    )


class Signature(NamedTuple):
    """Exact input signature: equal signatures take the same branch at every node."""

    model_version: str
    codes: bytes

    def cache_key(self, method: str) -> str:
        """Key of the ``explanation_cache`` table for this signature and method."""
        return f"{self.model_version}:{method}:{self.codes.hex()}"


def additivity_error(
    base_value: float,
    contributions: Iterable[float],
    raw_score: float,
    tolerance: float = ADDITIVITY_TOLERANCE,
) -> str | None:
    """None when base + Σ contributions equals ``raw_score`` within ``tolerance``, else why not."""
    values = [float(c) for c in contributions]
    if not all(math.isfinite(v) for v in [*values, base_value, raw_score]):
        return "additivity check failed: a value is not finite"
    total = math.fsum(values)
    residual = math.fsum([base_value, *values, -raw_score])
    if abs(residual) <= tolerance:
        return None
    return (
        f"additivity check failed: base {base_value:.9g} + sum of contributions {total:.9g} "
        f"differs from the raw score {raw_score:.9g} by {residual:.3g} log-odds (tolerance {tolerance:g})"
    )


def assemble(
    row: np.ndarray,
    names: Sequence[str],
    contributions: np.ndarray,
    base_value: float,
    raw_score: float,
    method: str,
    model_version: str,
    top_n: int = TOP_N,
) -> Explanation:
    """An explanation from one row's SHAP values: top contributors, reasons, additivity check."""
    values = {name: float(v) for name, v in zip(names, row, strict=True)}
    phi = {name: float(c) for name, c in zip(names, contributions, strict=True)}
    order = np.argsort(-np.abs(np.asarray(contributions, dtype=np.float64)), kind="stable")[:top_n]
    top = [
        TopFeature(
            feature=names[i],
            value=None if math.isnan(values[names[i]]) else values[names[i]],
            contribution=phi[names[i]],
            reason=reason(names[i], values, phi[names[i]]),
        )
        for i in order
    ]
    base, raw = float(base_value), float(raw_score)
    failure = additivity_error(base, phi.values(), raw)
    return Explanation(model_version, method, base, raw, phi, top, failure)


class Explainer:
    """Explanations for one registered model version; build once per version (``ExplainerCache``).

    Construction takes about 0.3 s (mostly ``dump_model`` for the split index) and makes the
    ``tree`` method ready.  The interventional method builds its background (regenerating
    training rows, about 1 s) and shap explainer (plus shap's own import, about 2 s) on first use
    or on ``warm``.
    """

    def __init__(
        self,
        root: Path,
        version: str | None = None,
        *,
        background: np.ndarray | None = None,
        background_rows: int = DEFAULT_BACKGROUND_ROWS,
        background_seed: int = DEFAULT_SEED,
        background_pool: int = DEFAULT_POOL_ROWS,
        num_threads: int = 1,
        expected_features: Sequence[str] | None = FEATURE_NAMES,
    ) -> None:
        # The scorer resolves the version, checks the feature list and gives the raw scores
        # exactly as the verdict got them; the booster copy here is for SHAP.
        self._scorer = ModelScorer(root, version, expected_features)
        registry = Registry(root)
        self._meta = registry.load_meta(self._scorer.version)
        self._booster = lgb.Booster(model_file=str(registry.path(self._scorer.version) / MODEL_FILE))
        self.splits = SplitIndex.from_booster(self._booster)
        self._num_threads = num_threads
        self._background_options = (background_rows, background_seed, background_pool)
        self._background = None if background is None else self._checked_rows(background)
        self._shap: Any = None
        self._counterfactual: CounterfactualSearch | None = None
        self._registry = registry
        self._neighbours: Neighbours | str | None = None  # a str: why there are none
        self._lock = threading.Lock()

    @property
    def version(self) -> str:
        return self._scorer.version

    @property
    def feature_names(self) -> tuple[str, ...]:
        return self._scorer.feature_names

    @property
    def booster(self) -> lgb.Booster:
        return self._booster

    @property
    def has_categorical_splits(self) -> bool:
        return self.splits.has_categorical

    def similar_cases(self, shap_rows: np.ndarray, k: int) -> list[list[dict[str, Any]]]:
        """The ``k`` labelled reference cases nearest each row's SHAP vector (issue 21,
        ``app.model.reference``); raises ``NoReference`` when the version has no reference set."""
        with self._lock:
            if self._neighbours is None:
                try:
                    reference = self._registry.load_reference(self.version)
                except Exception as exc:  # unreadable: said once, not read again per batch
                    reference, why = (
                        None,
                        f"the reference set of model version {self.version} is unreadable: {exc}",
                    )
                else:
                    why = (
                        f"model version {self.version} has no reference set of similar cases (trained "
                        "before fraudlens kept one: train it again, or `fraudlens models reference`)"
                    )
                self._neighbours = Neighbours(reference) if reference is not None else why
            neighbours = self._neighbours
        if isinstance(neighbours, str):
            raise NoReference(neighbours)
        return neighbours.lookup(shap_rows, k)

    def counterfactual(self, tx: Mapping[str, Any], card_state: Mapping[str, Any] | None) -> Counterfactual:
        """What would change the verdict of ``tx`` scored from ``card_state`` (the verdict's
        ``replay``): proposals scored by this version exactly as the scorer scores."""
        with self._lock:
            if self._counterfactual is None:
                self._counterfactual = CounterfactualSearch(self._scorer, self.splits)
            search = self._counterfactual
        return search.search(tx, card_state)

    # ------------------------------------------------------------- explain
    def explain_batch(self, matrix: np.ndarray, method: str = "tree") -> list[Explanation]:
        """One explanation per row; raises ``ValueError`` (bad method or shape) or
        ``UnsupportedModel`` for the whole batch, marks single rows failed on additivity."""
        rows = self._checked_rows(matrix)
        if rows.shape[0] == 0:
            return []
        contributions, base = self.contributions(rows, method)
        raw = self.raw_scores(rows)
        names = self.feature_names
        return [
            assemble(rows[i], names, contributions[i], base[i], raw[i], method, self.version)
            for i in range(rows.shape[0])
        ]

    def explain_from_cache(self, matrix: np.ndarray, cached: Sequence[Explanation]) -> list[Explanation]:
        """Explanations reusing cached SHAP values of rows with the same signature.

        Values and reasons come from each new row and the raw score is recomputed, so the
        additivity check also guards the cache hit."""
        rows = self._checked_rows(matrix)
        if len(cached) != rows.shape[0]:
            raise ValueError(f"{rows.shape[0]} rows but {len(cached)} cached explanations")
        raw = self.raw_scores(rows)
        out = []
        for row, score, hit in zip(rows, raw, cached, strict=True):
            if hit.model_version != self.version:
                raise ValueError(f"cached explanation of model {hit.model_version}, not {self.version}")
            phi = np.array([hit.contributions[name] for name in self.feature_names])
            out.append(
                assemble(row, self.feature_names, phi, hit.base_value, score, hit.method, self.version)
            )
        return out

    def contributions(self, matrix: np.ndarray, method: str = "tree") -> tuple[np.ndarray, np.ndarray]:
        """(SHAP values, shape rows x features; base value per row), in log-odds."""
        rows = self._checked_rows(matrix)
        if method == "tree":
            out = np.asarray(self._booster.predict(rows, pred_contrib=True, num_threads=self._num_threads))
            return out[:, :-1], out[:, -1]
        if method == "interventional":
            explainer = self.interventional_explainer()
            values = explainer.shap_values(self.splits.shap_inputs(rows), check_additivity=False)
            base = np.full(rows.shape[0], float(explainer.expected_value))
            return np.asarray(values, dtype=np.float64).reshape(rows.shape), base
        raise ValueError(f"unknown explanation method {method!r}; expected one of {METHODS}")

    def raw_scores(self, matrix: np.ndarray) -> np.ndarray:
        """The booster's raw scores (log-odds), computed as the scorer does."""
        raw, _ = self._scorer.predict(self._checked_rows(matrix))
        return raw

    def signatures(self, matrix: np.ndarray) -> list[Signature]:
        """Exact input signature per row (see ``app.explain.splits``)."""
        return [
            Signature(self.version, codes) for codes in self.splits.signatures(self._checked_rows(matrix))
        ]

    # ---------------------------------------------------- interventional
    def background(self) -> np.ndarray:
        """The background rows (built once, seeded)."""
        with self._lock:
            if self._background is None:
                size, seed, pool = self._background_options
                self._background = self._checked_rows(background_sample(self._meta, size, seed, pool))
            return self._background

    def interventional_explainer(self) -> Any:
        """The shap interventional explainer of this version (built once)."""
        background = self.background()
        with self._lock:
            if self._shap is None:
                self._shap = self._build_shap(background)
            return self._shap

    def warm(self, method: str = "tree") -> None:
        """Build what ``method`` needs now instead of on the first request."""
        if method == "interventional":
            self.interventional_explainer()
        elif method != "tree":
            raise ValueError(f"unknown explanation method {method!r}; expected one of {METHODS}")

    def _build_shap(self, background: np.ndarray) -> Any:
        if self.splits.has_categorical:
            raise UnsupportedModel(
                f"model {self.version} has categorical splits: shap's interventional TreeSHAP "
                "gets them wrong for LightGBM; use the 'tree' method"
            )
        import shap  # about 2 s to import: only processes that need it pay

        # An explicit masker: given a bare array, shap silently keeps only 100 of its rows.
        masker = shap.maskers.Independent(self.splits.shap_inputs(background), max_samples=len(background))
        return shap.TreeExplainer(self._booster, data=masker, feature_perturbation="interventional")

    def _checked_rows(self, matrix: np.ndarray) -> np.ndarray:
        rows = np.asarray(matrix, dtype=np.float64)
        if rows.ndim == 1:
            rows = rows.reshape(1, -1)
        if rows.ndim != 2 or rows.shape[1] != len(self.feature_names):
            raise ValueError(f"expected rows of {len(self.feature_names)} features, got shape {rows.shape}")
        return rows


class NoReference(LookupError):
    """The model version has no reference set of similar cases."""


class ExplainerCache:
    """Explainers built lazily, one per model version, safe to share between threads."""

    def __init__(self, root: Path, **options: Any) -> None:
        self.root = Path(root)
        self._options = options
        self._explainers: dict[str, Explainer] = {}
        self._lock = threading.Lock()

    def get(self, version: str | None = None) -> Explainer:
        """Explainer for ``version`` (None: the registry's CURRENT version)."""
        resolved = version or Registry(self.root).current()
        if resolved is None:
            raise RegistryError(f"no version given and no CURRENT model in {self.root}")
        with self._lock:
            explainer = self._explainers.get(resolved)
            if explainer is None:
                explainer = Explainer(self.root, resolved, **self._options)
                self._explainers[resolved] = explainer
            return explainer

    def loaded(self) -> list[str]:
        """Versions built so far."""
        with self._lock:
            return list(self._explainers)
