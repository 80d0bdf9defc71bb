"""Similar past cases (issue 21): how often the 3 nearest reference cases' majority outcome
agrees with the label of a test row neither the model nor the reference set saw — in SHAP space
(what the explainer serves) and in the raw features standardised by the reference (the
alternative it was chosen over) — against the base rate (always "legitimate"); and the CPU of
one lookup as the workers do it (``Neighbours.lookup`` on batches of 1, 8 and 64 SHAP vectors:
the workers' batches average 6 rows at 100 tx/s and 8.5 saturated, ``bench.cost``), beside
scikit-learn's brute-force ``NearestNeighbors`` on the same batches (the search it replaced).

The reference set is the version's own ``reference.npz``; the test rows are rebuilt from the
training summary (generated data). ``--quick``: the first 3,000 test rows.

    python -m bench.similar [--quick] [--models DIR]
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.explain.core import Explainer
from app.model.reference import DEFAULT_K, Neighbours
from app.model.registry import Registry
from bench.uncertainty import training_data

LOOKUP_TARGET_MS = 0.5  # per explanation, any batch size: a sixth of SHAP's ~2.9 ms a row (bench.cost)
BATCH_SIZES = (1, 8, 64)
SIZES_SAID = "/".join(map(str, BATCH_SIZES))


def agreement(
    reference_vectors: np.ndarray,
    reference_labels: np.ndarray,
    test_vectors: np.ndarray,
    test_labels: np.ndarray,
) -> dict[str, Any]:
    """How often the ``DEFAULT_K`` nearest reference rows' majority outcome agrees with the test
    label, overall and on the frauds (``base_rate_agreement``: always answering "legitimate")."""
    from sklearn.neighbors import NearestNeighbors

    _, found = NearestNeighbors(n_neighbors=DEFAULT_K).fit(reference_vectors).kneighbors(test_vectors)
    majority = (np.asarray(reference_labels)[found].sum(axis=1) * 2 > DEFAULT_K).astype(np.int8)
    labels = np.asarray(test_labels, dtype=np.int8)
    frauds = labels == 1
    return {
        "k": DEFAULT_K,
        "test_rows": len(labels),
        "agreement": float((majority == labels).mean()),
        "base_rate_agreement": float(1.0 - labels.mean()),
        "frauds_with_fraud_majority": float(majority[frauds].mean()) if frauds.any() else None,
    }


def space_comparison(
    reference_rows: np.ndarray,
    reference_shap: np.ndarray,
    reference_labels: np.ndarray,
    test_rows: np.ndarray,
    test_shap: np.ndarray,
    test_labels: np.ndarray,
) -> dict[str, Any]:
    """The neighbours' majority outcome against the test labels, in SHAP space and in the raw
    features standardised by the reference's mean and spread (missing values at the mean)."""
    mean = np.nanmean(reference_rows, axis=0)
    spread = np.nanstd(reference_rows, axis=0)
    spread[~(spread > 0)] = 1.0

    def scaled(rows: np.ndarray) -> np.ndarray:
        return np.nan_to_num((rows - mean) / spread)

    return {
        "shap": agreement(reference_shap, reference_labels, test_shap, test_labels),
        "raw": agreement(scaled(reference_rows), reference_labels, scaled(test_rows), test_labels),
    }


def run(quick: bool, models: Path, out: Path) -> dict[str, Any]:
    version, matrix, labels, calibration_end = training_data(models)
    registry = Registry(models)
    reference = registry.load_reference(version)
    if reference is None:
        raise SystemExit(f"model {version} has no reference set: train it again (fraudlens train)")
    # The reference rows are the ones right before the test (training's default reference).
    first = calibration_end - len(reference)
    test = slice(calibration_end, calibration_end + 3000 if quick else len(labels))
    test_shap, _ = Explainer(models, version).contributions(matrix[test])  # as the workers get them
    comparison = space_comparison(
        matrix[first:calibration_end], reference.shap.astype(np.float64), reference.labels,
        matrix[test], test_shap, labels[test],
    )  # fmt: skip
    cpu_ms = lookup_cpu_ms(Neighbours(reference), test_shap, quick)
    brute_ms = lookup_cpu_ms(_Brute(reference.shap), test_shap, quick)
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
        "cpu_ms_per_lookup_by_batch": cpu_ms,
        "brute_force_cpu_ms_per_lookup_by_batch": brute_ms,
    }
    targets = {
        "agreement": {
            "target": "neighbours' majority agrees with the held-out label more often than the base rate",
            "value": round(shap["agreement"], 4),
            "pass": shap["agreement"] > shap["base_rate_agreement"],
        },
        "lookup_cpu": {
            "target": f"CPU per lookup <= {LOOKUP_TARGET_MS} ms, batches of {SIZES_SAID} (worst)",
            "value": max(cpu_ms.values()),
            "pass": max(cpu_ms.values()) <= LOOKUP_TARGET_MS,
        },
    }
    return {"summary": summary, "targets": targets, "raw": comparison, "plots": []}


def lookup_cpu_ms(neighbours: Any, test_shap: np.ndarray, quick: bool) -> dict[str, float]:
    """Median CPU-ms per looked-up row, per batch size, over the test rows in order."""
    rows = test_shap[: 640 if quick else 3200]
    by_batch: dict[str, float] = {}
    for size in BATCH_SIZES:
        per: list[float] = []
        for i in range(0, len(rows) - size + 1, size):
            chunk = rows[i : i + size]
            started = time.process_time()
            neighbours.lookup(chunk, DEFAULT_K)
            per.append((time.process_time() - started) / len(chunk))
        by_batch[str(size)] = round(1000 * statistics.median(per), 4)
    return by_batch


class _Brute:
    """scikit-learn's brute-force search on the calling thread: the comparison only."""

    def __init__(self, shap: np.ndarray) -> None:
        from sklearn.neighbors import NearestNeighbors
        from threadpoolctl import threadpool_limits

        self._index = NearestNeighbors(algorithm="brute").fit(shap.astype(np.float64))
        self._limits = threadpool_limits

    def lookup(self, rows: np.ndarray, k: int) -> Any:
        with self._limits(limits=1):
            return self._index.kneighbors(rows, n_neighbors=k)


if __name__ == "__main__":
    from bench.__main__ import main_one

    main_one("similar")
