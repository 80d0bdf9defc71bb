"""Explainer cost, in one process: rows per second of the worker's compute path (prepare + SHAP +
reasons) and of SHAP alone, per row (batch 1) vs batched (16, 64, 256), tree vs interventional;
and the explanation cache's hit rate on generator traffic (exact input signatures).

    python -m bench.explainer_cost [--quick] [--models DIR]
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from app.explain import ExplainerCache
from app.explain.messages import features_matrix
from app.explain.work import compute, prepare
from bench.explainer import _requests, cache_hit_rate

BATCHES = (1, 16, 64, 256)


def rates(models: Path, rows: int, method: str) -> dict[str, Any]:
    explainers = ExplainerCache(models)
    requests = [dict(r, method=method) for r in _requests(models, rows + 500, seed=3)[-rows:]]
    explainer = explainers.get(requests[0]["model_version"])
    explainer.warm(method)
    matrix = np.vstack([features_matrix([r["features"]], explainer.feature_names) for r in requests])
    out: dict[str, Any] = {"method": method, "rows": rows}
    for batch in BATCHES:
        started = time.perf_counter()
        for i in range(0, rows, batch):
            chunk = requests[i : i + batch]
            compute(prepare(explainers, chunk, method), [None] * len(chunk))
        path_rate = rows / (time.perf_counter() - started)
        started = time.perf_counter()
        for i in range(0, rows, batch):
            explainer.contributions(matrix[i : i + batch], method)
        shap_rate = rows / (time.perf_counter() - started)
        out[f"batch_{batch}"] = {
            "path_rows_per_s": round(path_rate, 1),
            "shap_rows_per_s": round(shap_rate, 1),
        }
    return out


def run(quick: bool, models: Path, out: Path) -> dict[str, Any]:
    rows = 32 if quick else 256
    by_method = {method: rates(models, rows, method) for method in ("tree", "interventional")}
    cache = cache_hit_rate(models, 300 if quick else 10_000)
    summary = {
        "rows_per_s": {
            method: {str(b): figures[f"batch_{b}"]["path_rows_per_s"] for b in BATCHES}
            for method, figures in by_method.items()
        },
        "shap_only_rows_per_s": {
            method: {str(b): figures[f"batch_{b}"]["shap_rows_per_s"] for b in BATCHES}
            for method, figures in by_method.items()
        },
        "cache_hit_rate": cache["hit_rate"],
        "cache_requests": cache["requests"],
    }
    return {"summary": summary, "targets": {}, "raw": {"rates": by_method, "cache": cache}, "plots": []}


if __name__ == "__main__":
    from bench.__main__ import main_one

    main_one("explainer_cost")
