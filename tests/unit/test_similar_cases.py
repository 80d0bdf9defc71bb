"""Similar past cases (issue 21, ``app.model.reference``) against independent oracles: nearest
neighbours by brute-force numpy distances, the stored SHAP vectors by shap's own TreeExplainer,
the reference rows by regenerating the training data; and the explain path's use of them."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
import shap
from click.testing import CliRunner

from app.cli.main import cli
from app.explain.core import ExplainerCache
from app.explain.messages import explain_request
from app.explain.state import finished, from_record, new_row, to_record
from app.explain.work import compute, prepare
from app.model.features import FEATURE_NAMES, build_matrix
from app.model.generator import generate
from app.model.reference import REFERENCE_FILE, Neighbours, ReferenceSet
from app.model.registry import Registry
from app.model.training import REFERENCE_ROWS, RegisteredModel, load_labelled, split_points, train
from app.records.contracts import validate_message
from app.settings import get_settings

EXAMPLES = Path(__file__).resolve().parents[2] / "schemas" / "examples"
ROWS, SEED = 20_000, 3


def brute_force(reference: np.ndarray, rows: np.ndarray, k: int) -> list[list[tuple[int, float]]]:
    out = []
    for row in rows:
        distances = np.sqrt(((reference.astype(np.float64) - row) ** 2).sum(axis=1))
        order = np.argsort(distances, kind="stable")[:k]
        out.append([(int(i), float(distances[i])) for i in order])
    return out


def _reference(n: int, features: int, seed: int) -> ReferenceSet:
    rng = np.random.default_rng(seed)
    txs = [
        {"transaction_id": f"ref-{i}", "card_id": f"card-{i:06d}", "currency": "EUR", "channel": "pos",
         "country": "DE", "timestamp": "2026-01-01T00:00:00Z", "amount": float(i)}
        for i in range(n)
    ]  # fmt: skip
    labels = (rng.random(n) < 0.1).astype(np.int8)
    patterns = ["card_testing" if label else None for label in labels]
    return ReferenceSet.build(rng.normal(size=(n, features)), labels, txs, patterns)


def test_lookup_returns_the_nearest_cases_nearest_first(tmp_path: Path) -> None:
    reference = _reference(2000, 6, seed=1)
    (tmp_path / REFERENCE_FILE).write_bytes(reference.to_bytes())
    loaded = ReferenceSet.load(tmp_path)  # round trip through the file
    queries = np.random.default_rng(2).normal(size=(25, 6))
    found = Neighbours(loaded).lookup(queries, 3)
    for cases, expected in zip(found, brute_force(loaded.shap, queries, 3), strict=True):
        assert [c["transaction_id"] for c in cases] == [f"ref-{i}" for i, _ in expected]
        assert [c["distance"] for c in cases] == pytest.approx([d for _, d in expected], abs=1e-4)
        for case, (i, _) in zip(cases, expected, strict=True):
            assert case["outcome"] == ("fraud" if reference.labels[i] else "legitimate")
            assert case["pattern"] == ("card_testing" if reference.labels[i] else None)
            assert case["card"] == "•••• " + f"{i:06d}"[-4:]  # the last four characters only
            assert f"card-{i:06d}" not in json.dumps(case)  # never the full card id
    assert len(Neighbours(loaded).lookup(queries[:1], 50_000)[0]) == 2000  # k bounded by the set
    with pytest.raises(ValueError, match="shape"):
        Neighbours(loaded).lookup(np.zeros((1, 5)), 3)


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> RegisteredModel:
    return train(rows=ROWS, seed=SEED, registry_dir=tmp_path_factory.mktemp("models"), progress=False)


def test_training_keeps_the_most_recent_held_out_rows_with_their_shap(trained: RegisteredModel) -> None:
    registry = Registry(trained.path.parent)
    reference = registry.load_reference(trained.version)
    assert reference is not None
    items = list(generate(ROWS, SEED))  # the training data again, with the generator's patterns
    fit_end, _, calibration_end = split_points(ROWS)
    first = max(fit_end, calibration_end - REFERENCE_ROWS)
    held = items[first:calibration_end]
    assert list(reference.text["transaction_id"]) == [i.transaction["transaction_id"] for i in held]
    assert list(reference.labels) == [int(i.is_fraud) for i in held]
    assert list(reference.text["pattern"]) == [i.pattern or "" for i in held]
    assert 0 < reference.labels.sum() < len(reference)
    meta = registry.load_meta(trained.version)["reference"]
    assert (meta["rows"], meta["frauds"], meta["space"]) == (
        len(reference),
        int(reference.labels.sum()),
        "shap",
    )
    # The SHAP vectors, by shap's own TreeExplainer on the booster (path-dependent TreeSHAP).
    txs, _, _ = load_labelled(ROWS, SEED, None, None, progress=False)
    matrix, _ = build_matrix(txs)
    explainer = shap.TreeExplainer(lgb.Booster(model_file=str(trained.path / "model.txt")))
    sample = np.arange(first, calibration_end, 97)
    values = np.asarray(explainer.shap_values(matrix[sample]))
    assert np.allclose(reference.shap[sample - first], values, atol=1e-5)


def _request(trained: RegisteredModel, txid: str, features: dict[str, Any]) -> dict[str, Any]:
    verdict = json.loads((EXAMPLES / "verdict.valid.json").read_text())
    verdict.update(transaction_id=txid, model_version=trained.version, features=features)
    return explain_request(verdict, "high", "2026-12-06T00:00:00.000000Z", method="tree")


def test_complete_contributions_carry_their_nearest_reference_cases(trained: RegisteredModel) -> None:
    registry = Registry(trained.path.parent)
    reference = registry.load_reference(trained.version)
    assert reference is not None
    txs, _, _ = load_labelled(ROWS, SEED, None, None, progress=False)
    matrix, _ = build_matrix(txs)
    names = FEATURE_NAMES
    requests = [
        _request(
            trained,
            f"q-{i}",
            dict(zip(names, (None if np.isnan(v) else float(v) for v in matrix[i]), strict=True)),
        )
        for i in range(ROWS - 40, ROWS, 4)  # test rows
    ]
    explainers = ExplainerCache(trained.path.parent)
    outcomes = compute(prepare(explainers, requests, "tree"), [None] * len(requests), similar_k=3)
    for outcome in outcomes:
        assert outcome.explanation is not None and outcome.explanation.ok
        phi = np.array([outcome.explanation.contributions[n] for n in names])
        expected = brute_force(reference.shap, phi[None, :], 3)[0]
        found = outcome.similar_cases
        assert found is not None and (found["k"], found["space"]) == (3, "shap")
        assert [c["transaction_id"] for c in found["cases"]] == [
            str(reference.text["transaction_id"][i]) for i, _ in expected
        ]
    # Off: no lookup at all.
    assert all(
        o.similar_cases is None for o in compute(prepare(explainers, requests[:2], "tree"), [None, None])
    )

    # The row and its record: the complete update carries them, valid, and reads back the same.
    outcome, request = outcomes[0], requests[0]
    row = finished(new_row(request, "pending", "verdicts:0:1"), outcome.explanation, False,  # type: ignore[arg-type]
                   "2026-12-06T00:00:01.000000Z", outcome.similar_cases)  # fmt: skip
    record = to_record(row)
    validate_message("explanation", record)
    assert record["similar_cases"] == outcome.similar_cases
    again = from_record(json.loads(json.dumps(record)))
    assert again is not None and to_record(again) == record


def test_a_version_without_a_reference_gets_unavailable_not_a_failure(
    trained: RegisteredModel, tmp_path: Path
) -> None:
    import shutil

    root = tmp_path / "models"
    shutil.copytree(trained.path.parent, root)
    (root / trained.version / "reference.npz").unlink()
    txs, _, _ = load_labelled(2000, SEED, None, None, progress=False)
    matrix, _ = build_matrix(txs)
    names = FEATURE_NAMES
    features = dict(zip(names, (None if np.isnan(v) else float(v) for v in matrix[-1]), strict=True))
    outcomes = compute(prepare(ExplainerCache(root), [_request(trained, "q", features)], "tree"), [None], 3)
    assert outcomes[0].explanation is not None and outcomes[0].explanation.ok
    assert set(outcomes[0].similar_cases or {}) == {"unavailable"}
    assert "no reference set" in outcomes[0].similar_cases["unavailable"]  # type: ignore[index]


def test_models_reference_replaces_the_set_with_a_labelled_file(
    trained: RegisteredModel, tmp_path: Path
) -> None:
    import shutil

    root = tmp_path / "models"
    shutil.copytree(trained.path.parent, root)
    items = list(generate(3000, 99))
    data = tmp_path / "past.csv"
    fields = ["transaction_id", "card_id", "timestamp", "amount", "currency", "merchant_id", "mcc",
              "country", "card_country", "channel", "device_id"]  # fmt: skip
    with data.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([*fields, "is_fraud", "fraud_pattern"])
        for item in items:
            tx = item.transaction
            writer.writerow(
                [*("" if tx[f] is None else tx[f] for f in fields), int(item.is_fraud), item.pattern or ""]
            )
    runner = CliRunner()
    env = {"FRAUDLENS_MODELS_DIR": str(root)}
    get_settings.cache_clear()  # settings are read once per process: this command's own
    result = runner.invoke(
        cli, ["models", "reference", trained.version, "--data", str(data), "--rows", "1000"], env=env
    )
    assert result.exit_code == 0, result.output
    reference = Registry(root).load_reference(trained.version)
    assert reference is not None and len(reference) == 1000
    assert list(reference.text["transaction_id"]) == [i.transaction["transaction_id"] for i in items[-1000:]]
    assert list(reference.labels) == [int(i.is_fraud) for i in items[-1000:]]
    assert Registry(root).load_meta(trained.version)["reference"]["rows"] == 1000
    bad = runner.invoke(
        cli, ["models", "reference", "0" * 12, "--data", str(data)], env={"FRAUDLENS_MODELS_DIR": str(root)}
    )
    assert bad.exit_code != 0 and "not registered" in bad.output


def test_an_unreadable_reference_is_unavailable_and_read_once(
    trained: RegisteredModel, tmp_path: Path
) -> None:
    import shutil

    root = tmp_path / "models"
    shutil.copytree(trained.path.parent, root)
    broken = root / trained.version / "reference.npz"
    broken.write_bytes(b"not an npz")
    txs, _, _ = load_labelled(2000, SEED, None, None, progress=False)
    matrix, _ = build_matrix(txs)
    features = dict(zip(FEATURE_NAMES, (None if np.isnan(v) else float(v) for v in matrix[-1]), strict=True))
    explainers = ExplainerCache(root)
    first = compute(prepare(explainers, [_request(trained, "q", features)], "tree"), [None], 3)[0]
    assert first.explanation is not None and first.explanation.ok
    assert "unreadable" in (first.similar_cases or {})["unavailable"]
    trained_reference = trained.path / "reference.npz"
    shutil.copy(trained_reference, broken)  # a good file now: not read again by this explainer
    again = compute(prepare(explainers, [_request(trained, "q2", features)], "tree"), [None], 3)[0]
    assert again.similar_cases == first.similar_cases
