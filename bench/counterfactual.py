"""What would change the verdict (issue 20, first step): how often the search finds a proposal,
how big it is, and its CPU per verdict, on generator transactions the model reviews or denies.

Scored the serving way (the card state before each transaction, ``features_for``), with the
model at ``--models`` (default: the registry the settings name). Reports, per decision, the
share with an "approved if ..." proposal; proposals per verdict; fields changed and the amount
reduction of the first approve proposal; CPU time per search (``time.process_time``).

    python -m bench.counterfactual [--models DIR] [--count 20000] [--seed 23]
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from app.explain.counterfactual import APPROVE, CounterfactualSearch
from app.explain.splits import SplitIndex
from app.model.features import apply_transaction, features_for
from app.model.generator import generate_transactions
from app.model.predictor import ModelScorer


def measure(models: Path, count: int, seed: int) -> dict[str, Any]:
    scorer = ModelScorer(models)
    search = CounterfactualSearch(scorer, SplitIndex.from_booster(scorer.booster))
    states: dict[str, Any] = {}
    flagged = []
    for tx in generate_transactions(count, seed=seed):
        state = states.get(tx["card_id"])
        decision = scorer.decide(scorer.predict(np.asarray([features_for(tx, state)]))[1])[0]
        if decision != APPROVE:
            flagged.append((tx, state, decision))
        states[tx["card_id"]] = apply_transaction(tx, state)
    cpu, proposals, candidates, fields, reductions = [], [], [], [], []
    found = {"deny": [0, 0], "review": [0, 0]}
    for tx, state, decision in flagged:
        start = time.process_time()
        result = search.search(tx, state)
        cpu.append(time.process_time() - start)
        first = next((p for p in result.proposals if p.decision == APPROVE), None)
        found[decision][0] += first is not None
        found[decision][1] += 1
        proposals.append(len(result.proposals))
        candidates.append(result.candidates)
        if first is not None:
            fields.append(len(first.changes))
            if "amount" in first.changes:
                reductions.append(1 - first.changes["amount"] / tx["amount"])
    return {
        "model_version": scorer.version,
        "transactions": count,
        "seed": seed,
        "flagged": len(flagged),
        "approve_proposal_share": {d: (a / b if b else None) for d, (a, b) in found.items()},
        "flagged_by_decision": {d: b for d, (_, b) in found.items()},
        "proposals_per_verdict": statistics.mean(proposals) if proposals else None,
        "candidates_median": statistics.median(candidates) if candidates else None,
        "first_proposal_fields_mean": statistics.mean(fields) if fields else None,
        "amount_reduction_median": statistics.median(reductions) if reductions else None,
        "cpu_ms_median": 1000 * statistics.median(cpu) if cpu else None,
        "cpu_ms_p95": 1000 * sorted(cpu)[int(0.95 * len(cpu))] if cpu else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=None)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=23)
    args = parser.parse_args()
    models = args.models
    if models is None:
        from app.settings import get_settings

        models = get_settings().models_dir
    print(json.dumps(measure(models, args.count, args.seed), indent=2))


if __name__ == "__main__":
    main()
