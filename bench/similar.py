"""Similar past cases (issue 21): how often the 3 nearest reference cases' majority outcome
agrees with the label of a test row neither the model nor the reference set saw — in SHAP space
(what the explainer serves) and in the raw features standardised by the reference (the
alternative it was chosen over) — against the base rate (always "legitimate"); and the CPU of
one lookup as the workers do it (batches of 64 SHAP vectors, one ``NearestNeighbors`` query).

The reference set is the version's own ``reference.npz``; the test rows are rebuilt from the
training summary (generated data). ``--quick``: the first 3,000 test rows.

    python -m bench.similar [--quick] [--models DIR]
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np

from app.model.reference import DEFAULT_K, Neighbours
from app.model.registry import Registry
from app.model.training import shap_vectors, space_comparison
from bench.uncertainty import training_data

LOOKUP_TARGET_MS = 1.0  # per explanation: under the 1.6 ms of the contributions they ride with


def run(quick: bool, models: Path, out: Path) -> dict[str, Any]:
    version, matrix, labels, calibration_end = training_data(models)
    registry = Registry(models)
    reference = registry.load_reference(version)
    if reference is None:
        raise SystemExit(f"model {version} has no reference set: train it again (fraudlens train)")
    # The reference rows are the ones right before the test (training's default reference).
    first = calibration_end - len(reference)
    test = slice(calibration_end, calibration_end + 3000 if quick else len(labels))
    booster = lgb.Booster(model_file=str(registry.path(version) / "model.txt"))
    test_shap = shap_vectors(booster, matrix[test])
    comparison = space_comparison(
        matrix[first:calibration_end], reference.shap.astype(np.float64), reference.labels,
        matrix[test], test_shap, labels[test],
    )  # fmt: skip
    neighbours = Neighbours(reference)
    per: list[float] = []
    for i in range(0, min(len(test_shap), 3200), 64):
        chunk = test_shap[i : i + 64]
        started = time.process_time()
        neighbours.lookup(chunk, DEFAULT_K)
        per.append((time.process_time() - started) / len(chunk))
    cpu_ms = round(1000 * statistics.median(per), 4)
    shap, raw = comparison["shap"], comparison["raw"]
    summary = {
        "model_version": version,
        "reference_rows": len(reference),
        "reference_frauds": int(reference.labels.sum()),
        "test_rows": shap["test_rows"],
        "test_frauds": int(labels[test].sum()),
        "k": DEFAULT_K,
        "agreement": {
            "shap": shap["agreement"],
            "raw": raw["agreement"],
            "base_rate": shap["base_rate_agreement"],
        },
        "frauds_with_fraud_majority": {
            "shap": shap["frauds_with_fraud_majority"],
            "raw": raw["frauds_with_fraud_majority"],
        },
        "cpu_ms_per_lookup": cpu_ms,
    }
    targets = {
        "agreement": {
            "target": "neighbours' majority agrees with the held-out label more often than the base rate",
            "value": round(shap["agreement"], 4),
            "pass": shap["agreement"] > shap["base_rate_agreement"],
        },
        "lookup_cpu": {
            "target": f"CPU per lookup <= {LOOKUP_TARGET_MS} ms (batches of 64)",
            "value": cpu_ms,
            "pass": cpu_ms <= LOOKUP_TARGET_MS,
        },
    }
    return {"summary": summary, "targets": targets, "raw": comparison, "plots": []}


if __name__ == "__main__":
    from bench.__main__ import main_one

    main_one("similar")
