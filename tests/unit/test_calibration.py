"""The uncertainty's statistics (issue 21, ``app.model.calibration``) against independent oracles:
Venn-ABERS restated from its definition with scikit-learn's isotonic regression, the conformal
p-values counted by hand and by crepes, coverage on synthetic data whose labels are drawn from
known probabilities; and the router's use of it (the ``uncertainty`` of a request, the priority of
an uncertain verdict)."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import orjson
import pytest
from sklearn.isotonic import IsotonicRegression

from app.explain.policy import PriorityRules
from app.explain.state import from_record
from app.explain.uncertainty import Uncertainties
from app.explainer.router import Router
from app.explainer.skips import Skips
from app.model.calibration import Calibration
from app.model.registry import Registry
from app.model.training import RegisteredModel, train
from app.records.contracts import validate_message
from app.settings import Settings
from tests.unit.test_router_on_demand import NOW, Tables, verdict_event

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"


def synthetic(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Scores and labels drawn from them (a calibrated model, 2 % fraud), with tied scores."""
    rng = np.random.default_rng(seed)
    scores = np.round(rng.beta(0.3, 15.0, n), 4)
    return scores, (rng.random(n) < scores).astype(np.int8)


def isotonic_at(scores: np.ndarray, labels: np.ndarray, score: float, label: int) -> float:
    """The isotonic regression of the labels on the scores, with (score, label) added, at score."""
    fit = IsotonicRegression(y_min=0.0, y_max=1.0, increasing=True, out_of_bounds="clip")
    fit.fit(np.r_[scores, score], np.r_[labels, label].astype(np.float64))
    return float(fit.predict([score])[0])


def test_the_interval_is_the_venn_abers_one_by_its_definition() -> None:
    scores, labels = synthetic(400, seed=1)
    calibration = Calibration.fit(scores, labels)
    probes = np.r_[scores[:15], [0.0, 1e-6, 0.05, 0.2, 0.5, 0.99, 1.0]]
    low, high, point = calibration.intervals(probes)
    for i, score in enumerate(probes):
        p0, p1 = isotonic_at(scores, labels, score, 0), isotonic_at(scores, labels, score, 1)
        assert low[i] == pytest.approx(p0, abs=1e-9) and high[i] == pytest.approx(p1, abs=1e-9), score
        assert point[i] == pytest.approx(p1 / (1 - p0 + p1), abs=1e-9)


def test_p_values_count_each_labels_own_calibration_rows() -> None:
    scores, labels = synthetic(3000, seed=2)
    calibration = Calibration.fit(scores, labels)
    probes = np.r_[scores[:200], np.linspace(0, 1, 101), [1e-300]]
    served = calibration.p_values(probes)
    assert np.array_equal(served, calibration.conformal_p_values(probes))  # crepes itself
    for label in (0, 1):
        own = scores[labels == label]
        # hinge non-conformity: 1 - the probability of the label; at least as strange counts
        alphas = 1.0 - own if label == 1 else own
        for i in range(0, len(probes), 7):
            alpha = 1.0 - probes[i] if label == 1 else probes[i]
            expected = (sum(1 for a in alphas if a >= alpha) + 1) / (len(alphas) + 1)
            assert served[i, label] == pytest.approx(expected, abs=1e-12)


def test_coverage_holds_per_class_on_rows_it_never_saw() -> None:
    calibration = Calibration.fit(*synthetic(40_000, seed=3))
    scores, labels = synthetic(40_000, seed=4)
    for confidence in (0.9, 0.95):
        sets = calibration.prediction_sets(scores, confidence)
        for label in (0, 1):
            covered = sets[labels == label, label].mean()
            assert confidence - 0.02 <= covered <= confidence + 0.02, (confidence, label, covered)


def test_describe_flags_a_score_whose_interval_holds_a_threshold_boundary() -> None:
    scores, labels = synthetic(5000, seed=5)
    calibration = Calibration.fit(scores, labels)
    thresholds = {"review": 0.05, "deny": 0.4}
    boundaries = calibration.boundaries(thresholds)
    for name, threshold in thresholds.items():
        p0, p1 = isotonic_at(scores, labels, threshold, 0), isotonic_at(scores, labels, threshold, 1)
        assert boundaries[name] == pytest.approx(p1 / (1 - p0 + p1), abs=1e-9)
        # A point probability lies within its own interval: the threshold's score straddles it.
        (at,) = calibration.describe_many(np.array([threshold]), boundaries, 0.95)
        assert at["uncertain"] and name in at["straddles"]
    (far,) = calibration.describe_many(np.array([1e-6]), boundaries, 0.95)
    p1_far = isotonic_at(scores, labels, 1e-6, 1)
    assert p1_far < boundaries["review"] and not far["uncertain"] and far["straddles"] == []
    assert far["prediction_set"] == ["legitimate"]
    validate_message("explanation", {**_update(), "uncertainty": far})


def test_fit_refuses_a_slice_without_both_labels() -> None:
    with pytest.raises(ValueError, match="no fraud"):
        Calibration.fit(np.array([0.1, 0.2]), np.array([0, 0]))
    with pytest.raises(ValueError, match="2 scores but 1 labels"):
        Calibration.fit(np.array([0.1, 0.2]), np.array([1]))


def test_importing_venn_abers_leaves_numpys_error_handling_alone() -> None:
    """In a fresh interpreter: venn_abers changes numpy's error handling at import, once per
    process, so a check in this one would see whatever an earlier test left."""
    import subprocess
    import sys

    probe = (
        "import numpy as np; before = np.geterr()\n"
        "from app.explain.uncertainty import Uncertainties\n"
        "Uncertainties('/nonexistent', 0.95)  # imports venn_abers, as the router does at start\n"
        "from app.model.calibration import Calibration\n"
        "Calibration.fit(np.array([0.1, 0.2, 0.7, 0.9]), np.array([0, 0, 1, 1]))\n"
        "assert np.geterr() == before, (np.geterr(), before)\n"
    )
    run = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


def _update() -> dict[str, Any]:
    return json.loads((EXAMPLES / "explanation.valid.json").read_text())


# -- with a trained model: the registry and the router ---------------------------------------
@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> RegisteredModel:
    return train(rows=20_000, seed=3, registry_dir=tmp_path_factory.mktemp("models"), progress=False)


def test_the_calibration_is_part_of_the_version(trained: RegisteredModel) -> None:
    registry = Registry(trained.path.parent)
    calibration = registry.load_calibration(trained.version)
    assert calibration is not None
    meta = registry.load_meta(trained.version)
    assert len(calibration.scores) == meta["calibration"]["rows"] == meta["metrics"]["rows_calibration"]
    assert int(calibration.labels.sum()) == meta["calibration"]["frauds"] > 0
    held_out = meta["calibration"]["held_out"]
    assert set(held_out["coverage"]) == {"0.9", "0.95", "0.99"}
    assert sum(b["rows"] for b in held_out["reliability"]) == meta["metrics"]["rows_test"]
    # The same booster and thresholds without the calibration are another version.
    import lightgbm as lgb

    booster = lgb.Booster(model_file=str(trained.path / "model.txt"))
    bare = registry.register(
        booster, meta["feature_names"], meta["thresholds"], {}, meta["training"], make_current=False
    )
    assert bare != trained.version and registry.load_calibration(bare) is None
    answer = Uncertainties(registry.root, 0.95).of({"model_version": bare, "score": 0.5})
    assert set(answer) == {"unavailable"} and "no calibration" in answer["unavailable"]
    unknown = Uncertainties(registry.root, 0.95).of({"model_version": "0" * 12, "score": 0.5})
    assert set(unknown) == {"unavailable"} and "not registered" in unknown["unavailable"]


def _router(trained: RegisteredModel, **settings: Any) -> tuple[Router, Tables]:
    chosen = Settings(models_dir=trained.path.parent, explain_counterfactual_decisions=(), **settings)
    tables = Tables()
    names = SimpleNamespace(explanations="explanations", waiting="explanation_waiting")
    rules = PriorityRules.from_settings(chosen)
    return Router(tables, names, rules, chosen, Skips(every_s=10.0)), tables  # type: ignore[arg-type]


def _verdict(trained: RegisteredModel, txid: str, score: float) -> dict[str, Any]:
    out = json.loads((EXAMPLES / "verdict.valid.json").read_text())
    # An approve of 5.00: low priority by the rules (neither its decision nor its amount is high).
    out.update(
        transaction_id=txid, model_version=trained.version, score=score, decision="approve", amount=5.0
    )
    out.pop("replay", None)
    return out


@pytest.mark.parametrize("promote", [True, False])
def test_an_uncertain_verdict_is_routed_high_with_its_uncertainty(
    trained: RegisteredModel, promote: bool
) -> None:
    router, tables = _router(trained, explain_uncertain_high=promote)
    review = trained.thresholds["review"]
    sends = router.route(None, verdict_event(_verdict(trained, "tx-u", review), 3), NOW)  # type: ignore[arg-type]
    sends += router.route(None, verdict_event(_verdict(trained, "tx-c", 1e-7), 4), NOW)  # type: ignore[arg-type]
    topics = {orjson.loads(value)["transaction_id"]: topic for topic, _, value, _ in sends}
    assert topics == {"tx-u": "explain.high" if promote else "explain.low", "tx-c": "explain.low"}
    for txid, uncertain in (("tx-u", True), ("tx-c", False)):
        row = tables.row("explanations", txid)
        assert row is not None
        validate_message("explanation", row)  # the pending update readers get carries it
        assert row["uncertainty"]["uncertain"] is uncertain
        assert "uncertainty" not in row["request"]  # once per record, and read back into the row
        assert (from_record(row) or {})["request"]["uncertainty"] == row["uncertainty"]
    assert "review" in tables.row("explanations", "tx-u")["uncertainty"]["straddles"]  # type: ignore[index]


def test_a_micro_batch_gives_each_verdict_its_own_uncertainty(trained: RegisteredModel) -> None:
    """As the agent routes: the batch checked at once (``Router.check``), a refused verdict in
    its middle; the threshold's own score straddles it (a point lies in its own interval), a
    score of 1e-7 straddles nothing."""
    router, tables = _router(trained)
    certain = verdict_event(_verdict(trained, "tx-c", 1e-7), 3)
    bad = verdict_event({**_verdict(trained, "tx-b", 0.5), "score": "high"}, 4)
    uncertain = verdict_event(_verdict(trained, "tx-u", trained.thresholds["review"]), 5)
    events = [certain, bad, uncertain]
    checked = router.check(events)  # type: ignore[arg-type]
    for event, found in zip(events, checked, strict=True):
        router.route(None, event, NOW, found)  # type: ignore[arg-type]
    assert router.counts["invalid"] == 1 and tables.row("explanations", "tx-b") is None
    for txid, uncertain_flag in (("tx-c", False), ("tx-u", True)):
        row = tables.row("explanations", txid)
        assert row is not None and row["uncertainty"]["uncertain"] is uncertain_flag, txid
    assert "review" in tables.row("explanations", "tx-u")["uncertainty"]["straddles"]  # type: ignore[index]


def test_sampling_stays_the_rules_own_for_an_uncertain_verdict(trained: RegisteredModel) -> None:
    """Sampled out by the rules' priority (low), so not promoted: the relay, which has no
    calibration, tells "explained unasked" from the same rules."""
    router, tables = _router(trained, explain_low_sample_rate=0.0)
    uncertain = _verdict(trained, "tx-s", trained.thresholds["review"])
    assert router.route(None, verdict_event(uncertain, 3), NOW) == []  # type: ignore[arg-type]
    assert tables.row("explanations", "tx-s") is None
    waiting = tables.row("explanation_waiting", "tx-s")
    assert waiting is not None and waiting["status"] == "sampled_out"
    assert waiting["request"]["uncertainty"]["uncertain"] is True  # kept for when it is asked for


def test_a_broken_calibration_file_is_unavailable_never_a_stopped_router(
    trained: RegisteredModel, tmp_path: Path
) -> None:
    import shutil

    root = tmp_path / "models"
    shutil.copytree(trained.path.parent, root)
    (root / trained.version / "calibration.npz").write_bytes(b"PK\x03\x04 not a zip at all")
    verdicts = [{"model_version": trained.version, "score": 0.5}, {"model_version": "0" * 12, "score": 0.1}]
    broken, unknown = Uncertainties(root, 0.95).of_many(verdicts)
    assert set(broken) == {"unavailable"} and trained.version in broken["unavailable"]
    assert set(unknown) == {"unavailable"} and "not registered" in unknown["unavailable"]


def test_models_show_reports_the_calibration(trained: RegisteredModel) -> None:
    from click.testing import CliRunner

    from app.cli.main import cli
    from app.settings import get_settings

    get_settings.cache_clear()  # settings are read once per process: this command's own
    try:
        shown = CliRunner().invoke(
            cli, ["models", "show", trained.version], env={"FRAUDLENS_MODELS_DIR": str(trained.path.parent)}
        )
    finally:
        get_settings.cache_clear()
    assert shown.exit_code == 0, shown.output
    meta = json.loads(shown.output)
    assert meta["calibration"]["method"] == "venn_abers+mondrian_conformal"
    assert set(meta["calibration"]["held_out"]["coverage"]["0.95"]) == {"legitimate", "fraud"}
    assert meta["reference"]["rows"] > 0 and meta["reference"]["space"] == "shap"
