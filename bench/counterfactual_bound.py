"""Would a bound per range of amounts make the counterfactual search cheaper? (No: measured.)

For each reviewed or denied generator verdict, a branch-and-bound over the original amount's
range (0.01 up to the cent below it): a range is decided when the sum over trees of each tree's
largest leaf reachable for its amounts stays below the approve limit (every amount approves) or
the sum of the smallest ones reaches it (none does); otherwise it is halved, down to one dollar.
Reports per verdict the bounds computed (each a walk of every tree) and the cents left
undecided, beside the cells the search scores for the same change (the amount alone).

    python -m bench.counterfactual_bound [--models DIR] [--count 40] [--seed 21]
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from app.explain.counterfactual import _COLUMN, CounterfactualSearch, _cents_at_most
from app.explain.splits import SplitIndex
from app.model.features import card_median, features_for
from app.model.predictor import ModelScorer
from bench.counterfactual import flagged_verdicts

AMOUNT, LOG, TO_MEDIAN, CENTS, ROUND = (
    _COLUMN[n] for n in ("amount", "log_amount", "amount_to_median", "amount_cents", "is_round_amount")
)


def _boundary(feature: int, threshold: float, median: float) -> int:
    """The amount (cents) where ``feature <= threshold`` stops holding (about: one cent either way)."""
    if feature == AMOUNT:
        return _cents_at_most(threshold)
    if feature == LOG:
        return _cents_at_most(math.expm1(threshold)) if threshold < 700 else 10**9
    return _cents_at_most(threshold * median)


def _leaf_range(
    node: dict[str, Any], row: np.ndarray, lo: int, hi: int, median: float
) -> tuple[float, float]:
    """(smallest, largest) leaf value one tree can reach for amounts in [lo, hi] cents."""
    if "leaf_value" in node:
        return node["leaf_value"], node["leaf_value"]
    feature, threshold = node["split_feature"], node["threshold"]
    if feature in (AMOUNT, LOG) or (feature == TO_MEDIAN and median > 0):
        b = _boundary(feature, threshold, median)
        children = [node["left_child"]] if lo <= b + 1 else []  # one cent of slack either way
        children += [node["right_child"]] if hi >= b - 1 else []
    elif feature in (CENTS, ROUND):
        children = [node["left_child"], node["right_child"]]
    else:
        children = [node["left_child"] if row[feature] <= threshold else node["right_child"]]
    ranges = [_leaf_range(child, row, lo, hi, median) for child in children]
    return min(r[0] for r in ranges), max(r[1] for r in ranges)


def run(models: Path, count: int, seed: int) -> dict[str, Any]:
    scorer = ModelScorer(models)
    search = CounterfactualSearch(scorer, SplitIndex.from_booster(scorer.booster))
    trees = [t["tree_structure"] for t in scorer.booster.dump_model()["tree_info"]]
    limit = math.log(scorer.thresholds["review"] / (1 - scorer.thresholds["review"]))  # approve: raw < limit
    bounds, undecided, cells = [], [], []
    for tx, state, _decision in flagged_verdicts(scorer, 6000, seed)[0][:count]:
        median = card_median(state["am"]) if state and state["am"] else 0.0
        cents = round(tx["amount"] * 100)
        row = np.asarray(features_for(tx, state))
        cells.append(len(search._amount_cells(cents, median, row).amounts))
        computed, left, stack = 0, 0, [(1, cents - 1)]
        while stack:
            lo, hi = stack.pop()
            if lo > hi:
                continue
            computed += 1
            ranges = [_leaf_range(t, row, lo, hi, median) for t in trees]
            smallest, largest = sum(r[0] for r in ranges), sum(r[1] for r in ranges)
            if largest < limit or smallest >= limit:
                continue
            if hi - lo <= 100:
                left += hi - lo + 1
                continue
            middle = (lo + hi) // 2
            stack += [(lo, middle), (middle + 1, hi)]
        bounds.append(computed)
        undecided.append(left)
    return {
        "model_version": scorer.version, "seed": seed, "verdicts": len(bounds), "trees": len(trees),
        "bounds_per_search_median": statistics.median(bounds), "bounds_max": max(bounds),
        "undecided_cents_median": statistics.median(undecided),
        "cells_scored_by_the_search_median": statistics.median(cells),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=None)
    parser.add_argument("--count", type=int, default=40)
    parser.add_argument("--seed", type=int, default=21)
    args = parser.parse_args()
    models = args.models
    if models is None:
        from app.settings import get_settings

        models = get_settings().models_dir
    print(json.dumps(run(models, args.count, args.seed), indent=2))


if __name__ == "__main__":
    main()
