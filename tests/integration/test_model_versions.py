"""Two models with different trees, the second promoted mid-stream: every explanation is the SHAP
of the booster that made its verdict (DESIGN: "An explanation is computed with the model version
that produced the verdict"), not of the other one.

The oracle is independent of the product: each registered booster is loaded from its model file
with LightGBM and explained with ``shap.TreeExplainer``; which booster made a verdict is checked
from its raw score, not taken from the verdict's word for it.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import orjson
import pytest
import shap

from app.model.registry import MODEL_FILE, Registry
from app.model.training import train
from tests.integration.harness import REPO, Stack, SteadyProducer, of_kind
from tests.integration.test_explainer import send, updates_by_id, wait_complete, wait_every_kind

PER_VERSION = 150  # verdicts wanted from each model
TWINS = 50  # verdicts of model 1 sent again as model 2's: same features, so same cache signature
TOLERANCE = 1e-6  # the product's explanations against the reference (float64 both)
DIFFERENT = 1e-3  # two boosters' SHAP values "differ" on a row when some feature is this far apart


@pytest.fixture(scope="module")
def two_models(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> tuple[Path, str, str]:
    """The session's model (current) and a second one trained with another seed (not current)."""
    root = tmp_path_factory.mktemp("two-models") / "models"
    shutil.copytree(models_dir, root)
    first = Registry(root).current()
    assert first is not None
    second = train(rows=40_000, seed=8, registry_dir=root, progress=False, make_current=False).version
    assert second != first and Registry(root).current() == first
    return root, first, second


def booster(root: Path, version: str) -> lgb.Booster:
    """A booster loaded from the registry's file on its own (not through the product's loaders)."""
    return lgb.Booster(model_file=str(Registry(root).path(version) / MODEL_FILE))


def feature_matrix(model: lgb.Booster, verdicts: list[dict[str, Any]]) -> np.ndarray:
    names = model.feature_name()
    return np.array(
        [[np.nan if v["features"][n] is None else v["features"][n] for n in names] for v in verdicts],
        dtype=np.float64,
    )


def reference_shap(model: lgb.Booster, matrix: np.ndarray) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return np.asarray(shap.TreeExplainer(model).shap_values(matrix))


def tree_structure(model: lgb.Booster) -> list[Any]:
    return [tree["tree_structure"] for tree in model.dump_model()["tree_info"]]


def twin_verdicts(
    verdicts: list[dict[str, Any]], first: str, second: str, model: lgb.Booster
) -> list[dict[str, Any]]:
    """Model 1's first verdicts again, as if model 2 (``model``) had made them: its version, its
    raw score. Their feature rows are in the explainer's cache under model 1: it must not answer
    them from there."""
    originals = [v for v in verdicts if v["model_version"] == first][:TWINS]
    raw = model.predict(feature_matrix(model, originals), raw_score=True)
    return [
        {**v, "transaction_id": f"{v['transaction_id']}-twin", "model_version": second, "raw_score": float(r)}
        for v, r in zip(originals, raw, strict=True)
    ]


def promote(stack: Stack, version: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "app.cli.main", "models", "promote", version],
        cwd=REPO, env=stack.env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr


def versions_seen(messages: list[Any], version: str) -> int:
    return sum(orjson.loads(m.value())["model_version"] == version for m in messages)


def test_explanations_follow_the_model_of_their_verdict_across_a_promotion(
    tmp_path: Path, two_models: tuple[Path, str, str]
) -> None:
    root, first, second = two_models
    boosters = {first: booster(root, first), second: booster(root, second)}
    assert tree_structure(boosters[first]) != tree_structure(boosters[second]), "the trees must differ"

    stack = Stack(root=tmp_path, models_dir=root)
    stack.start_broker()
    try:
        stack.start_worker("scorer")
        stack.start_worker("explainer")
        load = SteadyProducer(stack, rate=40, seed=61)
        load.start()
        verdicts = stack.reader("verdicts")
        verdicts.read_until(lambda m: versions_seen(m, first) >= PER_VERSION, 180, "verdicts of model 1")
        promote(stack, second)
        verdicts.read_until(lambda m: versions_seen(m, second) >= PER_VERSION, 180, "verdicts of model 2")
        sent = load.finish_and_expect_verdicts(stack, verdicts)
        twins = twin_verdicts(verdicts.values(), first, second, boosters[second])
        send(stack, "verdicts", twins)
        updates = stack.reader("explanation.updates")
        wait_complete(updates, sent | {t["transaction_id"] for t in twins}, 300)
        finals = {
            txid: [u for u in sequence if u["status"] == "complete"][-1]
            for txid, sequence in updates_by_id(updates).items()
        }
        first_of = {v["transaction_id"]: v for v in reversed([*verdicts.values(), *twins])}
        # the counterfactuals routed beside them (deny, review by default) follow their verdict's version too
        wait_every_kind(updates, first_of.values(), 120)
        searched = [u for u in of_kind(updates.values(), "counterfactual") if u["status"] == "complete"]
        assert all(u["model_version"] == first_of[u["transaction_id"]]["model_version"] for u in searched)
        by_version: dict[str, list[dict[str, Any]]] = {first: [], second: []}
        for verdict in first_of.values():
            by_version[verdict["model_version"]].append(verdict)
    finally:
        stack.stop_all()

    assert min(len(v) for v in by_version.values()) >= PER_VERSION, {k: len(v) for k, v in by_version.items()}
    for version, verdicts_of in by_version.items():
        other = second if version == first else first
        check_version(boosters[version], boosters[other], verdicts_of, finals, version)


def check_version(
    made: lgb.Booster,
    other: lgb.Booster,
    verdicts: list[dict[str, Any]],
    finals: dict[str, dict[str, Any]],
    version: str,
) -> None:
    """Each verdict was scored by ``made`` (its raw score says so), and its explanation equals
    ``made``'s SHAP values, which differ from ``other``'s on most rows."""
    matrix = feature_matrix(made, verdicts)
    raw = np.array([v["raw_score"] for v in verdicts])
    assert np.allclose(made.predict(matrix, raw_score=True), raw, rtol=0, atol=TOLERANCE), version
    expected, others = reference_shap(made, matrix), reference_shap(other, matrix)
    names = made.feature_name()
    got = np.array([[finals[v["transaction_id"]]["contributions"][n] for n in names] for v in verdicts])
    wrong = [
        (v["transaction_id"], float(np.max(np.abs(g - e))))
        for v, g, e in zip(verdicts, got, expected, strict=True)
        if np.max(np.abs(g - e)) > TOLERANCE
    ]
    assert not wrong, f"{len(wrong)} of {len(verdicts)} explanations of {version} not its SHAP: {wrong[:5]}"
    assert {finals[v["transaction_id"]]["model_version"] for v in verdicts} == {version}
    apart = np.max(np.abs(expected - others), axis=1) > DIFFERENT
    assert apart.mean() >= 0.9, f"the two models' SHAP values differ on only {apart.mean():.0%} of rows"
    print(f"\n{version}: {len(verdicts)} explanations exact; the other model differs on {apart.mean():.0%}")
