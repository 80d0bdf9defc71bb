"""Explainer on a trained model: equal to shap, additive, exact signatures, built once per version."""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Hashable, Sequence
from itertools import islice
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pytest
import shap

from app.explain import (
    ADDITIVITY_TOLERANCE,
    Explainer,
    ExplainerCache,
    Explanation,
    SplitIndex,
    additivity_error,
    assemble,
)
from app.explain.background import background_sample
from app.explain.splits import ZERO_THRESHOLD
from app.model.features import FEATURE_NAMES, build_matrix
from app.model.generator import generate_transactions
from app.model.registry import MODEL_FILE, Registry, UnknownModelVersion


@pytest.fixture(scope="module")
def explainer(models_dir: Path) -> Explainer:
    return Explainer(models_dir)


@pytest.fixture(scope="module")
def booster(models_dir: Path) -> lgb.Booster:
    """A separately loaded copy: the reference side of every comparison."""
    registry = Registry(models_dir)
    return lgb.Booster(model_file=str(registry.path(str(registry.current())) / MODEL_FILE))


@pytest.fixture(scope="module")
def rows() -> np.ndarray:
    """Generator traffic the model has not seen (another seed), with warm card histories."""
    matrix, _ = build_matrix(generate_transactions(6_000, seed=11))
    return matrix[-400:]


def shap_tree_values(booster: lgb.Booster, matrix: np.ndarray) -> tuple[np.ndarray, float]:
    reference = shap.TreeExplainer(booster)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "binary classifier output has changed"
        values = reference.shap_values(matrix)
    return np.asarray(values), float(reference.expected_value)


def float32_misrouted(splits: SplitIndex, matrix: np.ndarray) -> np.ndarray:
    """Rows with a value between a threshold and its float32 rounding (shap routes them wrongly)."""
    bad = np.zeros(len(matrix), dtype=bool)
    for j, feature in enumerate(splits.features):
        exact = feature.thresholds
        rounded = exact.astype(np.float32).astype(np.float64)
        column = matrix[:, j][:, None]
        bad |= ((column <= exact) != (column <= rounded)).any(axis=1)
    return bad


# ---------------------------------------------------------------- tree method
def test_tree_method_equals_shap_tree_explainer(
    explainer: Explainer, booster: lgb.Booster, rows: np.ndarray
) -> None:
    explanations = explainer.explain_batch(rows, method="tree")
    expected, expected_base = shap_tree_values(booster, rows)
    ours = np.array([[e.contributions[name] for name in FEATURE_NAMES] for e in explanations])
    assert ours.shape == expected.shape == (len(rows), len(FEATURE_NAMES))
    assert np.abs(ours - expected).max() <= 1e-6
    assert all(abs(e.base_value - expected_base) <= 1e-6 for e in explanations)
    raw = booster.predict(rows, raw_score=True)
    assert np.array_equal([e.raw_score for e in explanations], raw)
    assert {e.method for e in explanations} == {"tree"} and {e.units for e in explanations} == {"log-odds"}
    assert {e.model_version for e in explanations} == {explainer.version}


def test_single_row_equals_the_same_row_in_a_batch(explainer: Explainer, rows: np.ndarray) -> None:
    batch = explainer.explain_batch(rows[:64])
    single = explainer.explain_batch(rows[10])
    assert len(single) == 1 and single[0].contributions == batch[10].contributions
    assert explainer.explain_batch(rows[:0]) == []


# ------------------------------------------------------- interventional method
def test_interventional_equals_shap_interventional(
    explainer: Explainer, booster: lgb.Booster, rows: np.ndarray
) -> None:
    sample = rows[:120]
    background = explainer.background()
    assert background.shape == (100, len(FEATURE_NAMES))
    reference = shap.TreeExplainer(booster, data=background, feature_perturbation="interventional")
    expected = reference.shap_values(sample, check_additivity=False)
    explanations = explainer.explain_batch(sample, method="interventional")
    ours = np.array([[e.contributions[name] for name in FEATURE_NAMES] for e in explanations])
    # shap routes a value lying between a threshold and its float32 rounding the wrong way;
    # everywhere else both run the very same computation.
    assert not float32_misrouted(explainer.splits, background).any()
    fine = ~float32_misrouted(explainer.splits, sample)
    assert fine.sum() >= 100
    assert np.abs(ours[fine] - expected[fine]).max() <= 1e-6
    assert all(abs(e.base_value - float(reference.expected_value)) <= 1e-9 for e in explanations)
    assert abs(explanations[0].base_value - np.mean(booster.predict(background, raw_score=True))) <= 1e-9
    assert all(e.ok and e.method == "interventional" for e in explanations)


def test_interventional_is_exact_where_shap_float32_thresholds_misroute(
    explainer: Explainer, booster: lgb.Booster, rows: np.ndarray
) -> None:
    """A value equal to a threshold that float32 rounds down goes left in LightGBM, right in shap."""
    crafted: list[np.ndarray] = []
    for j, feature in enumerate(explainer.splits.features):
        below = feature.thresholds[feature.thresholds.astype(np.float32) < feature.thresholds]
        for threshold in below[:3]:
            row = rows[len(crafted) % len(rows)].copy()
            row[j] = threshold
            crafted.append(row)
    matrix = np.array(crafted)
    assert len(matrix) >= 10 and float32_misrouted(explainer.splits, matrix).all()
    reference = shap.TreeExplainer(
        booster, data=explainer.background(), feature_perturbation="interventional"
    )
    naive = reference.shap_values(matrix, check_additivity=False)
    raw = booster.predict(matrix, raw_score=True)
    naive_error = np.abs(naive.sum(axis=1) + reference.expected_value - raw)
    assert (naive_error > ADDITIVITY_TOLERANCE).any(), "shap no longer misroutes: the workaround may go"
    ours = explainer.explain_batch(matrix, method="interventional")
    assert all(e.ok for e in ours), [e.failure for e in ours if not e.ok][:3]


def test_interventional_refuses_categorical_models(explainer: Explainer) -> None:
    assert not explainer.has_categorical_splits  # features.py encodes codes as plain numbers
    kinds = {t for f in explainer.splits.features for t in f.missing_types}
    assert kinds == {"None"} and not any(f.categorical for f in explainer.splits.features)


# ------------------------------------------------------------------ additivity
@pytest.mark.parametrize("method", ["tree", "interventional"])
def test_every_explanation_is_additive(explainer: Explainer, rows: np.ndarray, method: str) -> None:
    for explanation in explainer.explain_batch(rows[:80], method=method):
        assert explanation.ok, explanation.failure
        assert abs(explanation.additivity_residual) <= ADDITIVITY_TOLERANCE
        assert (
            additivity_error(
                explanation.base_value, explanation.contributions.values(), explanation.raw_score
            )
            is None
        )


def test_additivity_violation_is_detected(explainer: Explainer, rows: np.ndarray) -> None:
    good = explainer.explain_batch(rows[:1])[0]
    tampered = good.to_dict()
    tampered["contributions"]["amount"] += 2e-6
    error = additivity_error(tampered["base_value"], tampered["contributions"].values(), good.raw_score)
    assert error is not None and "additivity check failed" in error and "2e-06" in error
    assert not Explanation.from_dict(tampered).ok
    assert Explanation.from_dict(good.to_dict()) == good
    assert additivity_error(good.base_value, [float("nan")], good.raw_score) is not None
    # A wrong raw score (e.g. from another model) fails the check inside assemble too.
    contributions = np.array([good.contributions[name] for name in FEATURE_NAMES])
    wrong = assemble(
        rows[0], FEATURE_NAMES, contributions, good.base_value, good.raw_score + 0.1, "tree", "v"
    )
    assert wrong.failure is not None and wrong.failure.startswith("additivity check failed")


# ------------------------------------------------------------ top 3 and reasons
def test_top_three_by_absolute_contribution(explainer: Explainer, rows: np.ndarray) -> None:
    for row, explanation in zip(rows[:50], explainer.explain_batch(rows[:50]), strict=True):
        top = explanation.top_features
        assert len(top) == 3
        magnitudes = [abs(t["contribution"]) for t in top]
        assert magnitudes == sorted(magnitudes, reverse=True)
        rest = [abs(v) for k, v in explanation.contributions.items() if k not in {t["feature"] for t in top}]
        assert min(magnitudes) >= max(rest)
        for item in top:
            index = FEATURE_NAMES.index(item["feature"])
            assert item["value"] == row[index]
            assert item["contribution"] == explanation.contributions[item["feature"]]
            direction = "raises risk" if item["contribution"] > 0 else "lowers risk"
            assert item["reason"].endswith(direction) and len(item["reason"]) > len(direction) + 5


def test_top_features_break_ties_by_feature_order() -> None:
    names = ("a", "b", "c", "d")
    explanation = assemble(np.zeros(4), names, np.array([0.1, -0.5, 0.5, 0.2]), 0.0, 0.3, "tree", "v")
    assert [t["feature"] for t in explanation.top_features] == ["b", "c", "d"]
    assert explanation.top_features[0]["reason"] == "b = 0 — lowers risk"


def test_missing_value_is_reported_as_null() -> None:
    explanation = assemble(
        np.array([np.nan, 1.0]), ("amount", "x"), np.array([1.0, 0.0]), 0.0, 1.0, "tree", "v"
    )
    assert explanation.top_features[0]["value"] is None
    assert explanation.top_features[0]["reason"] == "amount is missing — raises risk"


# ------------------------------------------------------------------ signatures
def _same_interval_values(rng: np.random.Generator, thresholds: np.ndarray, code: int) -> list[float]:
    """Values LightGBM must treat alike: interval (T[code-1], T[code]] incl. its edges."""
    lo = thresholds[code - 1] if code > 0 else -np.inf
    hi = thresholds[code] if code < len(thresholds) else np.inf
    values = []
    if np.isfinite(hi):
        values += [hi, np.nextafter(hi, -np.inf)]  # <= threshold goes left: the edge belongs here
    if np.isfinite(lo):
        values.append(np.nextafter(lo, np.inf))
    if np.isfinite(lo) and np.isfinite(hi):
        values.append(rng.uniform(lo, hi))
    elif np.isfinite(hi):
        values.append(hi - rng.exponential(10.0))
    elif np.isfinite(lo):
        values.append(lo + rng.exponential(10.0))
    values = [v for v in values if lo < v <= hi]
    if lo < 0.0 <= hi:  # a NaN is compared as 0.0 (missing type None) and tiny values are zero
        values += [np.nan, 0.0, 1e-36, -1e-36, -ZERO_THRESHOLD]
    return values


def _variants(splits: SplitIndex, base: np.ndarray, count: int, seed: int) -> np.ndarray:
    """``count`` copies of each base row with values moved within their intervals."""
    rng = np.random.default_rng(seed)
    codes = splits.codes(base)
    out = []
    for row, row_codes in zip(base, codes, strict=True):
        for _ in range(count):
            variant = row.copy()
            for j in rng.choice(len(row), size=8, replace=False):
                feature = splits.features[j]
                variant[j] = rng.choice(_same_interval_values(rng, feature.thresholds, int(row_codes[j])))
            out.append(variant)
    return np.array(out)


def _edge_values(rng: np.random.Generator, thresholds: np.ndarray) -> list[float]:
    """Values on both sides of a few thresholds, missing and near-zero values, extremes."""
    values = [np.nan, 0.0, 1e-36, -1e-36, ZERO_THRESHOLD, -ZERO_THRESHOLD, 1e12, -1e12]
    values.append(np.nextafter(ZERO_THRESHOLD, np.inf))
    for t in rng.choice(thresholds, size=min(3, len(thresholds)), replace=False):
        values += [t, np.nextafter(t, -np.inf), np.nextafter(t, np.inf)]
    return values


def _edge_variants(splits: SplitIndex, base: np.ndarray, seed: int) -> np.ndarray:
    """Per base row, copies that differ in one feature only, set to edge values."""
    rng = np.random.default_rng(seed)
    used = [j for j, feature in enumerate(splits.features) if feature.thresholds.size]
    out = []
    for row in base:
        for j in rng.choice(used, size=2, replace=False):
            for value in _edge_values(rng, splits.features[j].thresholds):
                variant = row.copy()
                variant[j] = value
                out.append(variant)
    return np.array(out)


def _assert_equal_within_groups(signatures: Sequence[Hashable], values: np.ndarray) -> int:
    groups: dict[Hashable, list[int]] = defaultdict(list)
    for index, signature in enumerate(signatures):
        groups[signature].append(index)
    shared = 0
    for members in groups.values():
        if len(members) > 1:
            shared += 1
            assert np.array_equal(values[members], np.broadcast_to(values[members[0]], values[members].shape))
    return shared


def test_equal_signatures_give_identical_tree_shap(explainer: Explainer, rows: np.ndarray) -> None:
    """Rows moved within their intervals, and rows differing in one feature set to either side
    of a threshold, to NaN, zero or near-zero values: equal signature, identical values."""
    variants = _variants(explainer.splits, rows[:60], count=20, seed=5)
    edges = _edge_variants(explainer.splits, rows[60:100], seed=6)
    matrix = np.vstack([rows, variants, edges])
    signatures = explainer.signatures(matrix)
    contributions, _ = explainer.contributions(matrix, "tree")
    shared = _assert_equal_within_groups(signatures, contributions)
    assert shared >= 60  # every base row shares its signature with its variants
    assert np.isnan(variants).any() and (variants == 1e-36).any()
    raw = explainer.raw_scores(matrix)
    _assert_equal_within_groups(signatures, raw[:, None])


def test_equal_signatures_give_identical_interventional_shap(explainer: Explainer, rows: np.ndarray) -> None:
    variants = _variants(explainer.splits, rows[:6], count=6, seed=9)
    signatures = explainer.signatures(variants)
    contributions, _ = explainer.contributions(variants, "interventional")
    assert _assert_equal_within_groups(signatures, contributions) == 6


def test_signature_separates_the_two_sides_of_a_threshold(explainer: Explainer, rows: np.ndarray) -> None:
    j = FEATURE_NAMES.index("amount")
    threshold = explainer.splits.features[j].thresholds[5]
    at, above = rows[0].copy(), rows[0].copy()
    at[j], above[j] = threshold, np.nextafter(threshold, np.inf)
    first, second = explainer.signatures(np.array([at, above]))
    assert first != second and first.model_version == explainer.version
    values, _ = explainer.contributions(np.array([at, above]))
    assert not np.array_equal(values[0], values[1])  # the split really is there
    assert first.cache_key("tree") != first.cache_key("interventional")
    assert first.cache_key("tree").startswith(f"{explainer.version}:tree:")
    assert len(first.codes) == 2 * len(FEATURE_NAMES)


def test_cached_values_are_reused_exactly(explainer: Explainer, rows: np.ndarray) -> None:
    base = rows[:5]
    variants = _variants(explainer.splits, base, count=1, seed=3)
    assert explainer.signatures(base) == explainer.signatures(variants)
    cached = explainer.explain_batch(base)
    reused = explainer.explain_from_cache(variants, cached)
    fresh = explainer.explain_batch(variants)
    for hit, computed in zip(reused, fresh, strict=True):
        assert hit == computed  # values, raw score, reasons from the new row
    other = Explanation.from_dict({**cached[0].to_dict(), "model_version": "000000000000"})
    with pytest.raises(ValueError, match="cached explanation of model"):
        explainer.explain_from_cache(variants[:1], [other])


# ------------------------------------------------------- construction, caching
def test_explainer_cache_builds_each_version_once(models_dir: Path) -> None:
    cache = ExplainerCache(models_dir, background_rows=20, background_pool=2_000)
    version = Registry(models_dir).current()
    first = cache.get()
    assert cache.get(version) is first and cache.loaded() == [version]
    shap_explainer = first.interventional_explainer()
    assert first.interventional_explainer() is shap_explainer
    assert first.background() is first.background() and first.background().shape == (20, len(FEATURE_NAMES))
    with pytest.raises(UnknownModelVersion):
        cache.get("ffffffffffff")


def test_background_is_drawn_from_the_training_stream(models_dir: Path) -> None:
    registry = Registry(models_dir)
    meta = registry.load_meta(str(registry.current()))
    sample = background_sample(meta, size=30, seed=1, pool=3_000)
    assert np.array_equal(sample, background_sample(meta, size=30, seed=1, pool=3_000))
    assert not np.array_equal(sample, background_sample(meta, size=30, seed=2, pool=3_000))
    training = meta["training"]
    prefix, _ = build_matrix(islice(generate_transactions(training["rows"], training["seed"]), 3_000))
    assert all((prefix == row).all(axis=1).any() for row in sample)
    other = background_sample({"training": {"source": "data.csv"}}, size=10, seed=1, pool=500)
    assert other.shape == (10, len(FEATURE_NAMES))
    with pytest.raises(ValueError):
        background_sample(meta, size=0)


def test_bad_input_is_refused(explainer: Explainer, rows: np.ndarray) -> None:
    with pytest.raises(ValueError, match="expected rows of 28 features"):
        explainer.explain_batch(rows[:, :5])
    with pytest.raises(ValueError, match="unknown explanation method"):
        explainer.explain_batch(rows[:2], method="kernel")
    with pytest.raises(ValueError, match="unknown explanation method"):
        explainer.warm("kernel")
    with pytest.raises(ValueError, match="2 rows but 1 cached"):
        explainer.explain_from_cache(rows[:2], explainer.explain_batch(rows[:1]))
