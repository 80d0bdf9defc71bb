"""What the booster can tell apart: every feature's split thresholds, parsed from the model.

Two inputs that fall in the same interval between consecutive thresholds of every feature
take the same branch at every node of every tree, so any TreeSHAP value (path-dependent or
interventional against a fixed background) is the same for both.  ``SplitIndex.codes`` maps a
row to those interval indices; its bytes are the exact input signature of the explanation
cache.

LightGBM's decision at a numeric node (``include/LightGBM/tree.h``, ``NumericalDecision``):
NaN becomes 0.0 unless the node's missing type is ``NaN``; a node of missing type ``Zero``
sends zero (and so NaN) the default way, one of type ``NaN`` sends NaN the default way; every
other value goes left iff ``value <= threshold``.  The predictor also reads any
``|value| <= 1e-35`` as 0.0.  A categorical node sends an integer category (the value
truncated toward zero) left iff it is in the node's set; NaN, negative and unlisted
categories go right.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import lightgbm as lgb
import numpy as np

# LightGBM's kZeroThreshold (``1e-35f``, so 1.0000000180025095e-35 as a double): the predictor
# reads any |x| <= this as zero.
ZERO_THRESHOLD = float(np.float32(1e-35))
# Interval codes above any real index (a feature has at most max_bin - 1 thresholds).
NAN_CODE = 0xFFFF
ZERO_CODE = 0xFFFE
_NUMERIC_DTYPE = np.dtype("<u2")
_CATEGORICAL_DTYPE = np.dtype("<i4")
_OTHER_CATEGORY = -1  # NaN, negative or never-listed category: right at every categorical node


class UnsupportedModel(ValueError):
    """The model uses a construct that an explanation method cannot handle exactly."""


@dataclass(frozen=True)
class FeatureSplits:
    """All the split conditions on one feature, across the whole ensemble."""

    name: str
    thresholds: np.ndarray  # sorted unique numeric thresholds (float64)
    missing_types: frozenset[str]  # LightGBM missing types of the numeric nodes
    categories: frozenset[int]  # categories listed by categorical nodes
    categorical: bool

    @property
    def nan_distinct(self) -> bool:
        """Some node sends NaN its default way instead of comparing 0.0."""
        return bool(self.missing_types & {"NaN", "Zero"})

    @property
    def zero_distinct(self) -> bool:
        """Some node sends zero its default way instead of comparing it."""
        return "Zero" in self.missing_types


def _split_nodes(node: Mapping[str, Any]) -> Iterator[Mapping[str, Any]]:
    stack = [node]
    while stack:
        current = stack.pop()
        if "split_index" in current:
            yield current
            stack += [current["left_child"], current["right_child"]]


class SplitIndex:
    """Per-feature split thresholds of one booster, and the signatures derived from them."""

    def __init__(self, features: tuple[FeatureSplits, ...]) -> None:
        self.features = features
        self.has_categorical = any(f.categorical for f in features)
        self._dtype = _CATEGORICAL_DTYPE if self.has_categorical else _NUMERIC_DTYPE

    @classmethod
    def from_booster(cls, booster: lgb.Booster) -> SplitIndex:
        return cls.from_dump(booster.dump_model())

    @classmethod
    def from_dump(cls, dump: Mapping[str, Any]) -> SplitIndex:
        """Parse ``Booster.dump_model()`` (thresholds are printed with 17 digits: exact)."""
        names: list[str] = list(dump["feature_names"])
        thresholds: list[set[float]] = [set() for _ in names]
        missing: list[set[str]] = [set() for _ in names]
        categories: list[set[int]] = [set() for _ in names]
        categorical = [False] * len(names)
        for tree in dump["tree_info"]:
            for node in _split_nodes(tree["tree_structure"]):
                feature = int(node["split_feature"])
                if node["decision_type"] == "==":
                    categorical[feature] = True
                    categories[feature].update(int(c) for c in str(node["threshold"]).split("||"))
                else:
                    thresholds[feature].add(float(node["threshold"]))
                    missing[feature].add(str(node["missing_type"]))
        return cls(
            tuple(
                FeatureSplits(
                    name=name,
                    thresholds=np.array(sorted(thresholds[i]), dtype=np.float64),
                    missing_types=frozenset(missing[i]),
                    categories=frozenset(categories[i]),
                    categorical=categorical[i],
                )
                for i, name in enumerate(names)
            )
        )

    # ------------------------------------------------------------ signatures
    def codes(self, matrix: np.ndarray) -> np.ndarray:
        """Interval index of every value among its feature's thresholds, shape (rows, features)."""
        rows = _as_rows(matrix, len(self.features))
        out = np.empty(rows.shape, dtype=self._dtype)
        for j, feature in enumerate(self.features):
            column = _as_predictor_sees(rows[:, j])
            out[:, j] = (
                _category_codes(column, feature) if feature.categorical else _interval_codes(column, feature)
            )
        return out

    def signatures(self, matrix: np.ndarray) -> list[bytes]:
        """Compact exact signature per row (little-endian interval codes)."""
        return [row.tobytes() for row in self.codes(matrix)]

    # ---------------------------------------------------- shap interventional
    def shap_inputs(self, matrix: np.ndarray) -> np.ndarray:
        """Rows rewritten so that shap's interventional TreeSHAP routes them exactly like LightGBM.

        shap (0.51, ``cext/tree_shap.h``: ``struct Node { float thres, value; }``) compares
        against float32-rounded thresholds, so a value between a threshold and its float32
        rounding takes the wrong branch there.  Each value is replaced by a representative of
        its interval that lies on the same side of every threshold in both precisions; missing
        values become NaN only where LightGBM sends them the default way (shap does that for NaN).
        """
        rows = _as_rows(matrix, len(self.features))
        out = np.empty_like(rows)
        for j, feature in enumerate(self.features):
            column = _as_predictor_sees(rows[:, j])
            out[:, j] = _representatives(column, feature)
        return out


def _as_rows(matrix: np.ndarray, width: int) -> np.ndarray:
    rows = np.asarray(matrix, dtype=np.float64)
    if rows.ndim == 1:
        rows = rows.reshape(1, -1)
    if rows.ndim != 2 or rows.shape[1] != width:
        raise ValueError(f"expected rows of {width} features, got shape {rows.shape}")
    return rows


def _as_predictor_sees(column: np.ndarray) -> np.ndarray:
    """LightGBM's predictor drops |x| <= 1e-35 as zero before any decision."""
    return np.where(np.abs(column) <= ZERO_THRESHOLD, 0.0, column)


def _interval_codes(column: np.ndarray, feature: FeatureSplits) -> np.ndarray:
    nan = np.isnan(column)
    compared = np.where(nan, 0.0, column)  # a NaN not sent the default way compares as 0.0
    # side="left": the count of thresholds strictly below x, so x <= T[i] exactly for i >= code.
    codes = np.searchsorted(feature.thresholds, compared, side="left").astype(np.int64)
    if feature.zero_distinct:
        codes[compared == 0.0] = ZERO_CODE
    if feature.nan_distinct:
        codes[nan] = NAN_CODE
    return codes


def _category_codes(column: np.ndarray, feature: FeatureSplits) -> np.ndarray:
    listed = max(feature.categories, default=-1)
    with np.errstate(invalid="ignore"):
        truncated = np.trunc(np.where(np.isnan(column), -1.0, column))
    other = (truncated < 0) | (truncated > listed)
    return np.where(other, _OTHER_CATEGORY, truncated).astype(np.int64)


def _representatives(column: np.ndarray, feature: FeatureSplits) -> np.ndarray:
    if feature.categorical:
        raise UnsupportedModel(
            f"feature {feature.name!r} has categorical splits, which shap's interventional "
            "TreeSHAP mishandles for LightGBM; use the 'tree' method"
        )
    if len(feature.missing_types) > 1:
        raise UnsupportedModel(
            f"feature {feature.name!r} mixes missing-value types {sorted(feature.missing_types)}"
        )
    table = representative_table(feature)
    codes = _interval_codes(column, feature)
    out = np.empty(column.shape, dtype=np.float64)
    special = (codes == NAN_CODE) | (codes == ZERO_CODE)
    out[special] = np.nan  # shap sends NaN the default way, as LightGBM does for these
    out[~special] = table[codes[~special]]
    return out


def representative_table(feature: FeatureSplits) -> np.ndarray:
    """One value per interval that is on the same side of every threshold in float64 and float32."""
    exact = feature.thresholds
    if exact.size == 0:
        return np.zeros(1, dtype=np.float64)
    rounded = exact.astype(np.float32).astype(np.float64)
    upper = np.minimum(exact, rounded)  # x <= both thresholds of the interval's upper end
    lower = np.maximum(exact, rounded)  # x > both thresholds of the lower end
    table = np.append(upper, np.nextafter(lower[-1], np.inf))
    collapsed = np.flatnonzero(table[1:-1] <= lower[:-1])
    if collapsed.size:
        i = int(collapsed[0])
        raise UnsupportedModel(
            f"thresholds {exact[i]!r} and {exact[i + 1]!r} of feature {feature.name!r} are equal in "
            "float32, which shap's interventional TreeSHAP uses"
        )
    return table


class Forest:
    """Every node of the booster in flat arrays, to find which thresholds of some features a
    row can still reach when all its other features are fixed (``reachable``).

    The counterfactual search moves only the amount: with every other feature of a transaction
    fixed, each tree follows one branch at the nodes on fixed features, so only the thresholds
    of the amount's features on the nodes it can still reach change the score. Nodes are
    followed as LightGBM's predictor does (the module's docstring); a booster with categorical
    nodes is not followed (``reachable`` says None: every threshold counts, never wrong)."""

    def __init__(
        self,
        feature: np.ndarray,
        threshold: np.ndarray,
        left: np.ndarray,
        right: np.ndarray,
        default_left: np.ndarray,
        missing: np.ndarray,
        roots: np.ndarray,
        exact: bool,
    ) -> None:
        self.feature, self.threshold, self.left, self.right = feature, threshold, left, right
        self.default_left, self.missing, self.roots, self.exact = default_left, missing, roots, exact

    @classmethod
    def from_booster(cls, booster: lgb.Booster) -> Forest:
        return cls.from_dump(booster.dump_model())

    @classmethod
    def from_dump(cls, dump: Mapping[str, Any]) -> Forest:
        """Nodes in arrays (a leaf's feature is -1); missing types coded 0 None, 1 Zero, 2 NaN."""
        codes = {"None": 0, "Zero": 1, "NaN": 2}
        feature: list[int] = []
        threshold: list[float] = []
        left: list[int] = []
        right: list[int] = []
        default_left: list[bool] = []
        missing: list[int] = []
        exact = True

        def add() -> int:
            index = len(feature)
            feature.append(-1)
            threshold.append(0.0)
            left.append(-1)
            right.append(-1)
            default_left.append(False)
            missing.append(0)
            return index

        roots = []
        for tree in dump["tree_info"]:
            stack = [(tree["tree_structure"], add())]
            roots.append(stack[0][1])
            while stack:
                node, index = stack.pop()
                if "split_index" not in node:
                    continue
                if node["decision_type"] != "<=":
                    exact = False  # categorical: not followed (``reachable`` says None)
                    continue
                feature[index] = int(node["split_feature"])
                threshold[index] = float(node["threshold"])
                default_left[index] = bool(node["default_left"])
                missing[index] = codes[str(node["missing_type"])]
                for side, child in ((left, node["left_child"]), (right, node["right_child"])):
                    side[index] = add()
                    stack.append((child, side[index]))
        return cls(
            np.asarray(feature, dtype=np.int64),
            np.asarray(threshold, dtype=np.float64),
            np.asarray(left, dtype=np.int64),
            np.asarray(right, dtype=np.int64),
            np.asarray(default_left, dtype=bool),
            np.asarray(missing, dtype=np.int8),
            np.asarray(roots, dtype=np.int64),
            exact,
        )

    def reachable(self, row: np.ndarray, free: np.ndarray) -> np.ndarray | None:
        """Indices of the nodes on ``free`` features (a bool per feature) that ``row`` can reach
        when only the free features may take any value; None for a booster not followed."""
        if not self.exact:
            return None
        values = _as_predictor_sees(np.asarray(row, dtype=np.float64))
        found: list[np.ndarray] = []
        frontier = self.roots
        while frontier.size:
            frontier = frontier[self.feature[frontier] >= 0]  # leaves end their path
            features = self.feature[frontier]
            opened = free[features]
            found.append(frontier[opened])
            fixed = frontier[~opened]
            x = values[self.feature[fixed]]
            missing = self.missing[fixed]
            nan = np.isnan(x)
            compared = np.where(nan & (missing != 2), 0.0, x)
            default = ((missing == 1) & (compared == 0.0)) | ((missing == 2) & nan)
            with np.errstate(invalid="ignore"):
                goes_left = np.where(default, self.default_left[fixed], compared <= self.threshold[fixed])
            frontier = np.concatenate(
                [
                    self.left[frontier[opened]],
                    self.right[frontier[opened]],
                    np.where(goes_left, self.left[fixed], self.right[fixed]),
                ]
            )
        return np.concatenate(found) if found else np.zeros(0, dtype=np.int64)
