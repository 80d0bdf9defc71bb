"""How sure the model is (issue 21): on the test split of the model under bench — rows neither
the booster, its thresholds nor its calibration saw, rebuilt from the training summary in
``meta.json`` (generated data: rows and seed) — the conformal sets' coverage per class at 0.90,
0.95 and 0.99, the Venn-ABERS reliability table (observed fraud frequency against the mean
interval, per bin of the calibrated probability; ``uncertainty.png``), the share flagged
uncertain, and the CPU of one verdict's uncertainty as the router computes it.

Coverage is counted from what the router serves (``Calibration.prediction_sets``, the lookup)
and checked equal to crepes' own p-values on every test row.

    python -m bench.uncertainty [--models DIR]
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.explain.uncertainty import Uncertainties
from app.model.calibration import LABELS, REPORTED_CONFIDENCES, held_out_report
from app.model.features import build_matrix
from app.model.predictor import ModelScorer
from app.model.registry import Registry
from app.model.training import load_labelled, split_points
from bench.common import pyplot

COVERAGE_TOLERANCE = 0.02  # the "within 2 points of the nominal level, per class"
CPU_TARGET_US = 100.0  # cheap enough to ride with the router (it routes ~1,000 verdicts/s)


def test_split(models: Path) -> tuple[str, np.ndarray, np.ndarray]:
    """The current version, and its test rows' scores and labels, rebuilt from its training data."""
    version, matrix, labels, calibration_end = training_data(models)
    _, scores = ModelScorer(models, version).predict(matrix[calibration_end:])
    return version, np.asarray(scores), labels[calibration_end:]


def training_data(models: Path) -> tuple[str, np.ndarray, np.ndarray, int]:
    """The current version, its training data's feature matrix and labels (regenerated from the
    training summary in ``meta.json``), and where its test rows begin."""
    registry = Registry(models)
    version = registry.current()
    if version is None:
        raise SystemExit(f"no current model in {models} (make model)")
    training = registry.load_meta(version)["training"]
    if not str(training.get("source")).startswith("generator("):
        raise SystemExit(f"model {version} was trained on {training.get('source')}: needs generated data")
    txs, labels, _ = load_labelled(int(training["rows"]), int(training["seed"]), None, None, False)
    matrix, _ = build_matrix(txs)
    _, _, calibration_end = split_points(len(txs))
    return version, matrix, labels, calibration_end


def cpu_per_verdict(models: Path, version: str, scores: np.ndarray, verdicts: int) -> dict[str, Any]:
    """CPU of ``Uncertainties.of_many`` per verdict (what the router adds), in batches of 100 as
    the router computes them (one per micro-batch), and of ``of`` one verdict at a time."""
    uncertainties = Uncertainties(models, 0.95)
    chosen = [{"model_version": version, "score": float(s)} for s in scores[:verdicts]]
    uncertainties.of(chosen[0])  # loads the calibration once, as the router does
    batched: list[float] = []
    single: list[float] = []
    for i in range(0, len(chosen), 100):
        chunk = chosen[i : i + 100]
        started = time.process_time()
        uncertainties.of_many(chunk)
        batched.append((time.process_time() - started) / len(chunk))
        started = time.process_time()
        for verdict in chunk:
            uncertainties.of(verdict)
        single.append((time.process_time() - started) / len(chunk))
    calibration = uncertainties.registry.load_calibration(version)
    assert calibration is not None
    crepes: list[float] = []  # what serving would cost with crepes' own p-values, one score each
    for score in scores[:20]:
        started = time.process_time()
        calibration.conformal_p_values(np.array([score]))
        crepes.append(time.process_time() - started)
    return {
        "verdicts": len(chosen),
        "cpu_us_median": round(1e6 * statistics.median(batched), 2),
        "cpu_us_one_at_a_time": round(1e6 * statistics.median(single), 2),
        "crepes_ms_one_score": round(1e3 * statistics.median(crepes), 2),
    }


def run(quick: bool, models: Path, out: Path) -> dict[str, Any]:
    version, scores, labels = test_split(models)
    registry = Registry(models)
    calibration = registry.load_calibration(version)
    if calibration is None:
        raise SystemExit(f"model {version} has no calibration: train it again (fraudlens train)")
    thresholds = registry.load_meta(version)["thresholds"]
    report = held_out_report(calibration, scores, labels, thresholds)  # crepes' p-values
    served = calibration.p_values(scores)
    if not np.array_equal(served, calibration.conformal_p_values(scores)):
        raise AssertionError("the served p-values differ from crepes'")
    coverage: dict[str, dict[str, float]] = {}
    for confidence in REPORTED_CONFIDENCES:
        sets = calibration.prediction_sets(scores, confidence)
        coverage[f"{confidence:g}"] = {
            name: round(float(sets[labels == i, i].mean()), 4) for i, name in enumerate(LABELS)
        }
    worst = max(abs(c - float(level)) for level, per in coverage.items() for c in per.values())
    bins = report["reliability"]
    inside = sum(b["inside"] for b in bins)
    cost = cpu_per_verdict(models, version, scores, 1000 if quick else 5000)
    summary = {
        "model_version": version,
        "test_rows": report["rows"],
        "test_frauds": report["frauds"],
        "calibration_rows": len(calibration.scores),
        "calibration_frauds": int(calibration.labels.sum()),
        "coverage": coverage,
        "uncertain_share": round(report["uncertain_share"], 4),
        "interval_width_median": report["interval_width_median"],
        "reliability": bins,
        "cpu_us_per_verdict": cost["cpu_us_median"],
        "cpu_us_one_verdict_at_a_time": cost["cpu_us_one_at_a_time"],
        "crepes_ms_one_score": cost["crepes_ms_one_score"],
    }
    targets = {
        "coverage": {
            "target": f"conformal coverage within {COVERAGE_TOLERANCE:.0%} of nominal per class (worst gap)",
            "value": round(worst, 4),
            "pass": worst <= COVERAGE_TOLERANCE,
        },
        "reliability": {
            "target": "observed fraud frequency inside the mean interval, every bin (bins inside)",
            "value": inside,
            "pass": inside == len(bins),
        },
        "cpu": {
            "target": f"uncertainty CPU per verdict <= {CPU_TARGET_US:.0f} µs (router, batches of 100)",
            "value": cost["cpu_us_median"],
            "pass": cost["cpu_us_median"] <= CPU_TARGET_US,
        },
    }
    plot = "uncertainty.png" if not quick else "uncertainty-quick.png"
    _plot(bins, coverage, out / plot)
    return {"summary": summary, "targets": targets, "raw": {"cost": cost, "report": report}, "plots": [plot]}


def _plot(bins: list[dict[str, Any]], coverage: dict[str, dict[str, float]], path: Path) -> None:
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.5))
    x = [b["mean_probability"] for b in bins]
    low = [b["mean_probability"] - b["mean_p0"] for b in bins]
    high = [b["mean_p1"] - b["mean_probability"] for b in bins]
    left.errorbar(x, x, yerr=[low, high], fmt="o", capsize=4, label="mean Venn-ABERS interval")
    wilson = [b["observed_wilson_95"] for b in bins]
    observed = [b["observed"] for b in bins]
    left.errorbar(
        x, observed, yerr=[[o - w[0] for o, w in zip(observed, wilson, strict=True)],
                           [w[1] - o for o, w in zip(observed, wilson, strict=True)]],
        fmt="s", color="C3", alpha=0.7, capsize=2, label="observed fraud frequency (Wilson 95%)",
    )  # fmt: skip
    left.plot([1e-5, 1], [1e-5, 1], ":", color="grey")
    left.set_xscale("log")
    left.set_yscale("symlog", linthresh=1e-3)
    left.set_ylim(0, 1.1)
    left.set_xlabel("calibrated fraud probability (bin mean)")
    left.set_ylabel("probability / frequency")
    left.set_title("Reliability on the test split")
    left.legend(fontsize=8)
    levels = list(coverage)
    for offset, name in ((-0.15, "legitimate"), (0.15, "fraud")):
        right.bar(
            [i + offset for i in range(len(levels))], [coverage[lv][name] for lv in levels], 0.3, label=name
        )
    for i, level in enumerate(levels):
        right.hlines(float(level), i - 0.35, i + 0.35, colors="black", linestyles="--")
    right.set_xticks(range(len(levels)), [f"{float(lv):.0%}" for lv in levels])
    right.set_ylim(0.8, 1.0)
    right.set_xlabel("nominal confidence (dashed)")
    right.set_ylabel("empirical coverage")
    right.set_title("Mondrian conformal coverage per class")
    right.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    from bench.__main__ import main_one

    main_one("uncertainty")
