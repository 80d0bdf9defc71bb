"""Background rows for interventional SHAP, rebuilt from the generator (the registry keeps no data).

When the model was trained on generator data, its ``meta.json`` names the seed and row count,
and regenerating that stream gives back the very training rows: the sample is drawn from the
stream's first ``pool`` rows, which lie in the fitting slice.  Otherwise (a CSV-trained model)
it comes from a generator stream with ``seed``.  Either way the same inputs give the same rows.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from itertools import islice
from typing import Any

import numpy as np

from app.model.features import build_matrix
from app.model.generator import generate_transactions

DEFAULT_BACKGROUND_ROWS = 100
DEFAULT_POOL_ROWS = 20_000
DEFAULT_SEED = 7
_GENERATOR_SOURCE = re.compile(r"^generator\(seed=(-?\d+)\)$")


def training_stream(meta: Mapping[str, Any], seed: int) -> tuple[int, int, int]:
    """(stream length, stream seed, usable prefix) for the model described by ``meta``."""
    training = meta.get("training", {})
    match = _GENERATOR_SOURCE.match(str(training.get("source", "")))
    rows = int(training.get("rows") or 0)
    if match and rows > 0:
        fit_rows = int(training.get("rows_fit") or rows)
        return rows, int(match.group(1)), fit_rows
    return 0, seed, 0


def background_sample(
    meta: Mapping[str, Any],
    size: int = DEFAULT_BACKGROUND_ROWS,
    seed: int = DEFAULT_SEED,
    pool: int = DEFAULT_POOL_ROWS,
) -> np.ndarray:
    """``size`` feature rows sampled without replacement, reproducibly, from training-like traffic."""
    if size < 1:
        raise ValueError("the background needs at least one row")
    length, stream_seed, usable = training_stream(meta, seed)
    if length:
        take = min(max(pool, size), usable)
        transactions = list(islice(generate_transactions(length, stream_seed), take))
    else:
        take = max(pool, size)
        transactions = list(generate_transactions(take, stream_seed))
    matrix, _ = build_matrix(transactions)
    if len(matrix) < size:
        raise ValueError(f"only {len(matrix)} rows available for a background of {size}")
    chosen = np.random.default_rng(seed).choice(len(matrix), size=size, replace=False)
    return matrix[np.sort(chosen)]
