"""Split index on small synthetic boosters: NaN / zero missing types, categorical splits,
negative values around zero, and the float32 representatives used for shap."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
import shap

from app.explain import Explainer, SplitIndex, UnsupportedModel
from app.explain.splits import ZERO_THRESHOLD, FeatureSplits, representative_table
from app.model.registry import Registry

NAMES = ["signed", "sparse", "category", "smooth"]


def _data(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = 4_000
    signed = rng.choice([-2.0, -1.0, 0.0, 0.0, 1.0, 2.5], size=n) + rng.normal(0, 0.01, n) * (
        rng.random(n) < 0.3
    )
    signed[rng.random(n) < 0.15] = np.nan
    sparse = np.where(rng.random(n) < 0.5, 0.0, rng.exponential(3.0, n))
    category = rng.integers(0, 12, n).astype(np.float64)
    smooth = rng.normal(0, 1, n)
    logit = np.nan_to_num(signed, nan=1.5) + (sparse > 2) - 0.4 * smooth + np.isin(category, [2, 5, 7]) * 1.5
    labels = (rng.random(n) < 1 / (1 + np.exp(-logit))).astype(int)
    return np.column_stack([signed, sparse, category, smooth]), labels


def _train(**params: Any) -> lgb.Booster:
    matrix, labels = _data(0)
    categorical = params.pop("categorical", False)
    dataset = lgb.Dataset(
        matrix, labels, feature_name=NAMES, categorical_feature=[2] if categorical else "auto"
    )
    base = {"objective": "binary", "num_leaves": 15, "min_data_in_leaf": 10, "verbose": -1, "num_threads": 1}
    return lgb.train({**base, **params}, dataset, num_boost_round=25)


@pytest.fixture(scope="module")
def boosters() -> dict[str, lgb.Booster]:
    return {
        "nan": _train(),  # features with NaN in training get missing type NaN
        "zero": _train(zero_as_missing=True),
        "none": _train(use_missing=False),
        "categorical": _train(categorical=True),
    }


def _kinds(booster: lgb.Booster) -> tuple[set[str], set[str]]:
    splits = SplitIndex.from_booster(booster)
    return {t for f in splits.features for t in f.missing_types}, {
        f.name for f in splits.features if f.categorical
    }


def test_the_synthetic_boosters_cover_each_case(boosters: dict[str, lgb.Booster]) -> None:
    assert "NaN" in _kinds(boosters["nan"])[0]
    assert "Zero" in _kinds(boosters["zero"])[0]
    assert _kinds(boosters["none"])[0] == {"None"}
    assert _kinds(boosters["categorical"])[1] == {"category"}
    thresholds = SplitIndex.from_booster(boosters["none"]).features[0].thresholds
    assert (thresholds < 0).any() and (np.abs(thresholds) <= ZERO_THRESHOLD).any()  # splits around zero


def _probe_rows(booster: lgb.Booster, seed: int) -> np.ndarray:
    """Rows built from each feature's edge values so that many share a signature."""
    rng = np.random.default_rng(seed)
    splits = SplitIndex.from_booster(booster)
    pools = []
    for feature in splits.features:
        pool = [np.nan, 0.0, 1e-36, -1e-36, ZERO_THRESHOLD, -ZERO_THRESHOLD, 1e9, -1e9, -0.5, 2.7, 99.0]
        for t in feature.thresholds:
            pool += [t, np.nextafter(t, -np.inf), np.nextafter(t, np.inf)]
        pool += [float(c) for c in feature.categories] + [c + 0.6 for c in feature.categories]
        pools.append(np.array(pool))
    # Few features move at a time, so rows collide often.
    base = np.array([rng.choice(pool) for pool in pools])
    out = []
    for _ in range(3_000):
        if rng.random() < 0.7:  # the base row with one feature moved
            row = base.copy()
            j = rng.integers(len(pools))
            row[j] = rng.choice(pools[j])
        else:
            row = np.array([rng.choice(pool) for pool in pools])
        out.append(row)
    return np.array(out)


@pytest.mark.parametrize("kind", ["nan", "zero", "none", "categorical"])
def test_equal_signatures_give_identical_values(boosters: dict[str, lgb.Booster], kind: str) -> None:
    booster = boosters[kind]
    matrix = _probe_rows(booster, seed=len(kind))
    signatures = SplitIndex.from_booster(booster).signatures(matrix)
    contributions = np.asarray(booster.predict(matrix, pred_contrib=True, num_threads=1))
    groups: dict[bytes, list[int]] = defaultdict(list)
    for index, signature in enumerate(signatures):
        groups[signature].append(index)
    shared = [members for members in groups.values() if len(members) > 1]
    assert len(shared) >= 20 and sum(len(m) for m in shared) >= 1_000
    for members in shared:
        assert (contributions[members] == contributions[members[0]]).all(), kind
    assert len(groups) >= 100  # and the signature does tell inputs apart


@pytest.mark.parametrize("kind", ["nan", "zero", "none"])
def test_shap_inputs_make_interventional_shap_match_lightgbm(
    boosters: dict[str, lgb.Booster], kind: str
) -> None:
    booster = boosters[kind]
    splits = SplitIndex.from_booster(booster)
    probe = _probe_rows(booster, seed=3)
    background, rows = probe[:40], probe[40:240]
    masker = shap.maskers.Independent(splits.shap_inputs(background), max_samples=len(background))
    explainer = shap.TreeExplainer(booster, data=masker, feature_perturbation="interventional")
    values = explainer.shap_values(splits.shap_inputs(rows), check_additivity=False)
    assert abs(explainer.expected_value - np.mean(booster.predict(background, raw_score=True))) <= 1e-9
    residual = values.sum(axis=1) + explainer.expected_value - booster.predict(rows, raw_score=True)
    assert np.abs(residual).max() <= 1e-6


def test_categorical_models_are_refused_for_interventional_only(
    boosters: dict[str, lgb.Booster], tmp_path: Path
) -> None:
    booster = boosters["categorical"]
    with pytest.raises(UnsupportedModel, match="categorical"):
        SplitIndex.from_booster(booster).shap_inputs(np.zeros((1, 4)))
    registry = Registry(tmp_path)
    version = registry.register(booster, NAMES, {"review": 0.2, "deny": 0.8}, {}, {"source": "synthetic"})
    explainer = Explainer(tmp_path, version, expected_features=None, background=_data(1)[0][:20])
    assert explainer.has_categorical_splits
    rows = _data(2)[0][:50]
    assert all(e.ok for e in explainer.explain_batch(rows, method="tree"))
    with pytest.raises(UnsupportedModel, match="categorical splits"):
        explainer.explain_batch(rows, method="interventional")


def test_representatives_refuse_thresholds_equal_in_float32() -> None:
    close = np.array([1.0, np.nextafter(1.0, 2.0)])
    feature = FeatureSplits("x", close, frozenset({"None"}), frozenset(), categorical=False)
    with pytest.raises(UnsupportedModel, match="equal in float32"):
        representative_table(feature)
    spaced = FeatureSplits("x", np.array([0.1, 0.3]), frozenset({"None"}), frozenset(), categorical=False)
    table = representative_table(spaced)
    assert table[0] <= 0.1 < table[1] <= 0.3 < table[2]
    assert np.float32(table[1]) <= np.float32(0.3) and table[1] > np.float32(0.1)


def test_codes_refuse_a_wrong_width(boosters: dict[str, lgb.Booster]) -> None:
    with pytest.raises(ValueError, match="expected rows of 4 features"):
        SplitIndex.from_booster(boosters["nan"]).codes(np.zeros((2, 3)))


def test_categorical_codes_follow_lightgbm(boosters: dict[str, lgb.Booster]) -> None:
    """NaN, negative and never-listed categories all go right: one code; -0.5 truncates to 0."""
    booster = boosters["categorical"]
    splits = SplitIndex.from_booster(booster)
    unlisted = max(splits.features[2].categories) + 1.0
    rows = np.tile([1.0, 1.0, 0.0, 0.0], (7, 1))
    rows[:, 2] = [np.nan, -3.0, 1e12, unlisted, 0.0, -0.5, 0.9]
    codes = splits.codes(rows)[:, 2]
    assert len(set(codes[:4])) == 1 and len(set(codes[4:])) == 1 and codes[0] != codes[4]
    contributions = np.asarray(booster.predict(rows, pred_contrib=True))
    assert (contributions[:4] == contributions[0]).all() and (contributions[4:] == contributions[4]).all()
