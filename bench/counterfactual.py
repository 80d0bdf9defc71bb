"""What would change the verdict (issue 20, first step): how often the search finds a proposal,
how big it is, and its CPU per verdict, on generator transactions the model reviews or denies.

Scored the serving way (the card state before each transaction, ``features_for``), with the
model at ``--models`` (default: the registry the settings name). Reports, per decision, the
share with an "approved if ..." proposal; proposals per verdict; fields changed and the amount
reduction of the first approve proposal; CPU time per search (``time.process_time``).

    python -m bench.counterfactual [--models DIR] [--count 20000] [--seed 23]
    python -m bench.counterfactual --compare [--compare-count 150] ...

``--compare``: the search side by side with dice-ml (``bench/counterfactual_dice.py``) on the
first ``--compare-count`` flagged verdicts, the methods' order rotating from one verdict to the
next; per method the share with a verified approve proposal, the fields and amount change of
the best one (fewest fields, then the smallest amount change), rows scored and CPU per verdict.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import Counter
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
    flagged, _ = flagged_verdicts(scorer, count, seed)
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


def flagged_verdicts(
    scorer: ModelScorer, count: int, seed: int
) -> tuple[list[tuple[dict[str, Any], Any, str]], list[float]]:
    """(tx, card state before it, decision) of every reviewed or denied generator transaction,
    and every transaction's amount."""
    states: dict[str, Any] = {}
    flagged, amounts = [], []
    for tx in generate_transactions(count, seed=seed):
        state = states.get(tx["card_id"])
        decision = scorer.decide(scorer.predict(np.asarray([features_for(tx, state)]))[1])[0]
        if decision != APPROVE:
            flagged.append((tx, state, decision))
        amounts.append(float(tx["amount"]))
        states[tx["card_id"]] = apply_transaction(tx, state)
    return flagged, amounts


def compare(
    models: Path, count: int, seed: int, limit: int, methods: list[str], budget_s: float = 5.0
) -> dict[str, Any]:
    """The search and dice-ml's methods side by side, verdict by verdict (order rotating)."""
    from bench.counterfactual_dice import DiceBaseline

    scorer = ModelScorer(models)
    flagged, amounts = flagged_verdicts(scorer, count, seed)
    ours = CounterfactualSearch(scorer, SplitIndex.from_booster(scorer.booster))
    runners: dict[str, Any] = {
        "splits": None,
        **{m: DiceBaseline(scorer, m, amounts, budget_s=budget_s) for m in methods},
    }
    names = list(runners)
    runs: dict[str, dict[str, list[Any]]] = {
        n: {"cpu": [], "rows": [], "best": [], "decision": [], "amount_only": [], "errors": []} for n in names
    }
    for i, (tx, state, decision) in enumerate(flagged[:limit]):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            start = time.process_time()
            if name == "splits":
                result = ours.search(tx, state)
                changes = [dict(p.changes) for p in result.proposals if p.decision == APPROVE]
                rows = result.candidates
            else:
                out = runners[name].search(tx, state)
                changes, rows = out["proposals"], out["rows"]
                if out["error"]:
                    runs[name]["errors"].append(out["error"])
            runs[name]["cpu"].append(time.process_time() - start)
            runs[name]["rows"].append(rows)
            runs[name]["decision"].append(decision)
            runs[name]["best"].append(
                min(changes, key=lambda c: (len(c), _reduction(tx, c))) if changes else None
            )
            alone = [c["amount"] for c in changes if set(c) == {"amount"}]
            runs[name]["amount_only"].append(max(alone) if alone else None)
    report: dict[str, Any] = {
        "model_version": scorer.version,
        "transactions": count,
        "seed": seed,
        "flagged": len(flagged),
        "compared": min(limit, len(flagged)),
        "methods": {},
    }
    for name in names:
        r = runs[name]
        share = {}
        for d in ("review", "deny"):
            picks = [b for b, dd in zip(r["best"], r["decision"], strict=True) if dd == d]
            share[d] = sum(b is not None for b in picks) / len(picks) if picks else None
        best = [(b, tx) for b, (tx, _, _) in zip(r["best"], flagged, strict=False) if b is not None]
        cuts = [_reduction(tx, b) for b, tx in best if "amount" in b]
        report["methods"][name] = {
            "approve_proposal_share": share,
            "verified_share": sum(b is not None for b in r["best"]) / len(r["best"]) if r["best"] else None,
            "best_fields_mean": statistics.mean(len(b) for b, _ in best) if best else None,
            "best_amount_reduction_median": statistics.median(cuts) if cuts else None,
            "best_changes_amount_share": len(cuts) / len(best) if best else None,
            "errors": dict(Counter(e.split(":")[0] for e in r["errors"])),
            "rows_scored_median": statistics.median(r["rows"]),
            **_paired(runs["splits"]["amount_only"], r["amount_only"]),
            # verdicts where this method verified an approve proposal and the search found none
            "found_where_splits_did_not": sum(
                b is not None and s is None for b, s in zip(r["best"], runs["splits"]["best"], strict=True)
            ),
            "cpu_ms_median": 1000 * statistics.median(r["cpu"]),
            "cpu_ms_p95": 1000 * sorted(r["cpu"])[int(0.95 * len(r["cpu"]))],
        }
    return report


def _paired(ours: list[float | None], theirs: list[float | None]) -> dict[str, Any]:
    """On the verdicts where both found an approve proposal that lowers the amount alone: how
    much higher the search's amount is (median ratio), and how often theirs is higher."""
    pairs = [(a, b) for a, b in zip(ours, theirs, strict=True) if a is not None and b is not None]
    return {
        "amount_alone_pairs": len(pairs),
        "amount_alone_splits_over_theirs_median": statistics.median(a / b for a, b in pairs)
        if pairs
        else None,
        "amount_alone_theirs_higher": sum(b > a for a, b in pairs),
    }


def _reduction(tx: dict[str, Any], changes: dict[str, Any]) -> float:
    return 1 - changes["amount"] / float(tx["amount"]) if "amount" in changes else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", type=Path, default=None)
    parser.add_argument("--count", type=int, default=20_000)
    parser.add_argument("--seed", type=int, default=23)
    parser.add_argument("--compare", action="store_true", help="side by side with dice-ml")
    parser.add_argument("--compare-count", type=int, default=150)
    parser.add_argument("--methods", default="dice-random,dice-genetic")
    parser.add_argument("--dice-budget", type=float, default=5.0, help="CPU seconds per dice-ml call")
    args = parser.parse_args()
    models = args.models
    if models is None:
        from app.settings import get_settings

        models = get_settings().models_dir
    if args.compare:
        report = compare(
            models, args.count, args.seed, args.compare_count, args.methods.split(","), args.dice_budget
        )
    else:
        report = measure(models, args.count, args.seed)
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
