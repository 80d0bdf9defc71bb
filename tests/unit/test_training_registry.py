"""Training on a small generated set, the registry layout, and the scorer."""

from __future__ import annotations

import json
from pathlib import Path

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest
from sklearn import metrics as sklearn_metrics  # shap depends on it: an independent reference

from app.model.features import FEATURE_NAMES, build_matrix
from app.model.predictor import IncompatibleModelError, ModelScorer, sigmoid
from app.model.registry import Registry, UnknownModelVersion, content_version
from app.model.training import (
    RegisteredModel,
    average_precision,
    choose_thresholds,
    load_labelled,
    roc_auc,
    split_points,
    train,
)

ROWS, SEED = 20_000, 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> RegisteredModel:
    root = tmp_path_factory.mktemp("models")
    return train(rows=ROWS, seed=SEED, registry_dir=root, progress=False)


@pytest.fixture(scope="module")
def held_out() -> tuple[np.ndarray, np.ndarray]:
    txs, labels, _ = load_labelled(ROWS, SEED, None, None, progress=False)
    matrix, _ = build_matrix(txs)
    _, _, calibration_end = split_points(len(txs))
    return matrix[calibration_end:], labels[calibration_end:]


def test_registers_a_complete_version(trained: RegisteredModel) -> None:
    root = trained.path.parent
    assert (trained.path / "model.txt").is_file()
    assert (root / "CURRENT").read_text().strip() == trained.version and trained.is_current
    meta = json.loads((trained.path / "meta.json").read_text())
    assert meta["version"] == trained.version and meta["feature_names"] == list(FEATURE_NAMES)
    assert set(meta["metrics"]) >= {"roc_auc", "pr_auc", "base_rate", "rows_train", "rows_test"}
    rows = meta["metrics"]
    assert rows["rows_train"] + rows["rows_calibration"] + rows["rows_test"] == ROWS
    assert (trained.path / "calibration.npz").is_file()
    assert meta["calibration"]["rows"] == rows["rows_calibration"]
    training = meta["training"]
    assert training["rows"] == ROWS and training["seed"] == SEED
    assert training["params"]["num_threads"] <= 2 and training["params"]["deterministic"] is True
    assert {"source", "created_at", "lightgbm_version", "best_iteration"} <= set(training)
    assert Registry(root).versions() == [trained.version]
    assert not [p for p in root.iterdir() if p.name.startswith(".")]  # no staging left over


def test_model_is_useful_and_thresholds_ordered(trained: RegisteredModel) -> None:
    metrics = trained.metrics
    print(f"\n20k rows: {metrics}")
    assert metrics["pr_auc"] > 5 * metrics["base_rate"]
    assert metrics["roc_auc"] > 0.8
    assert 0 < trained.thresholds["review"] < trained.thresholds["deny"] <= 1


def test_same_inputs_give_the_same_version(trained: RegisteredModel, tmp_path: Path) -> None:
    again = train(rows=ROWS, seed=SEED, registry_dir=tmp_path, progress=False)
    assert again.version == trained.version
    assert (again.path / "model.txt").read_bytes() == (trained.path / "model.txt").read_bytes()


def test_scorer_reproduces_the_booster(
    trained: RegisteredModel, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    matrix, labels = held_out
    booster = lgb.Booster(model_file=str(trained.path / "model.txt"))
    scorer = ModelScorer(trained.path.parent, trained.version)
    raw, probability = scorer.predict(matrix)
    assert np.allclose(raw, booster.predict(matrix, raw_score=True), rtol=0, atol=1e-12)
    assert np.allclose(probability, booster.predict(matrix), rtol=0, atol=1e-12)
    # The stored model is the early-stopped one the metrics were computed with.
    assert average_precision(labels, probability) == pytest.approx(trained.metrics["pr_auc"])
    single_raw, _ = scorer.predict(matrix[0])
    assert single_raw.shape == (1,)
    assert scorer.predict(matrix[:0])[1].shape == (0,)
    assert scorer.feature_names == FEATURE_NAMES and scorer.thresholds == trained.thresholds


def test_decide_uses_inclusive_thresholds(trained: RegisteredModel) -> None:
    scorer = ModelScorer(trained.path.parent)  # CURRENT
    review, deny = scorer.thresholds["review"], scorer.thresholds["deny"]
    probabilities = np.array([0.0, np.nextafter(review, 0), review, deny, 1.0])
    assert scorer.decide(probabilities) == ["approve", "approve", "review", "deny", "deny"]
    assert scorer.decide(deny) == ["deny"]


def test_sigmoid_is_stable() -> None:
    out = sigmoid(np.array([-1000.0, -5.0, 0.0, 5.0, 1000.0]))
    assert np.all(np.isfinite(out)) and out[2] == 0.5
    assert np.allclose(out[1:4], 1 / (1 + np.exp(-np.array([-5.0, 0.0, 5.0]))))


def test_registry_versions_current_and_errors(trained: RegisteredModel, tmp_path: Path) -> None:
    source = Registry(trained.path.parent)
    booster = lgb.Booster(model_file=str(trained.path / "model.txt"))
    meta = source.load_meta(trained.version)
    registry = Registry(tmp_path / "models")
    assert registry.versions() == [] and registry.current() is None
    args = (booster, FEATURE_NAMES, meta["thresholds"], meta["metrics"], meta["training"])
    first = registry.register(*args, make_current=False)
    assert registry.current() == first  # set on first registration even so
    assert registry.register(*args) == first and registry.versions() == [first]
    later = {"created_at": "2100-01-01T00:00:00Z"}  # versions() sorts by creation time
    other = registry.register(
        booster, FEATURE_NAMES, {"review": 0.1, "deny": 0.5}, {}, later, make_current=False
    )
    assert other != first and registry.current() == first
    assert registry.versions() == [first, other]
    registry.set_current(other)
    assert registry.current() == other
    model_text = (registry.path(other) / "model.txt").read_bytes()
    assert content_version(model_text, FEATURE_NAMES, {"review": 0.1, "deny": 0.5}) == other
    for bad in ("0123456789ab", "../../etc", ""):
        with pytest.raises(UnknownModelVersion):
            registry.load_meta(bad)
    with pytest.raises(UnknownModelVersion, match="not registered"):
        registry.set_current("0123456789ab")
    with pytest.raises(ValueError):
        registry.register(booster, FEATURE_NAMES, {"review": 0.6, "deny": 0.5}, {}, {})


def test_unknown_versions_and_other_features_are_refused(trained: RegisteredModel) -> None:
    assert ModelScorer(trained.path.parent).version == trained.version  # CURRENT by default
    with pytest.raises(UnknownModelVersion):
        ModelScorer(trained.path.parent, "ffffffffffff")
    with pytest.raises(IncompatibleModelError):
        ModelScorer(trained.path.parent, trained.version, expected_features=("amount",))


def test_metrics_match_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    labels = (rng.random(5_000) < 0.05).astype(int)
    scores = np.round(rng.random(5_000) + labels * 0.3, 2)  # rounding makes ties
    assert roc_auc(labels, scores) == pytest.approx(sklearn_metrics.roc_auc_score(labels, scores))
    reference = sklearn_metrics.average_precision_score(labels, scores)
    assert average_precision(labels, scores) == pytest.approx(reference)


def test_choose_thresholds() -> None:
    rng = np.random.default_rng(1)
    labels = (rng.random(10_000) < 0.02).astype(int)
    scores = np.clip(rng.normal(0.1, 0.05, 10_000) + labels * rng.uniform(0.2, 0.8, 10_000), 1e-6, 1 - 1e-6)
    cut = choose_thresholds(scores, labels)
    assert 0 < cut["review"] < cut["deny"] <= 1
    denied = scores >= cut["deny"]
    assert labels[denied].mean() >= 0.9
    noise = choose_thresholds(rng.random(1_000), np.zeros(1_000, dtype=int))  # no precision anywhere
    assert 0 < noise["review"] < noise["deny"]


def test_csv_source_is_read_and_time_ordered(tmp_path: Path) -> None:
    txs, labels, _ = load_labelled(1_500, 5, None, None, progress=False)
    frame = pd.DataFrame(txs).assign(fraud=labels.astype(bool)).sample(frac=1.0, random_state=0)
    path = tmp_path / "tx.csv"
    frame.to_csv(path, index=False)
    loaded, loaded_labels, source = load_labelled(0, 0, path, "fraud", progress=False)
    assert source == str(path)
    assert [t["transaction_id"] for t in loaded] == [t["transaction_id"] for t in txs]
    assert loaded == txs and np.array_equal(loaded_labels, labels)
    with pytest.raises(ValueError, match="missing columns"):
        load_labelled(0, 0, path, "label_that_is_not_there", progress=False)
