"""The counterfactual search of another commit beside today's, verdict by verdict, order
alternating: same proposals? how much CPU each? and every cent of today's ranges checked.

    python -m bench.counterfactual_ab --against 7140494 [--models DIR] [--count 250] [--seeds 24,25,26]

The other commit's ``app/explain/counterfactual.py`` is loaded from git (``git show``) beside
the working tree's and both search the same reviewed or denied generator verdicts. Reports the
verdicts whose proposals differ (fields, decision, score), whether today's amount ranges are
wider or narrower, CPU per search (``time.process_time``, median and p95 each) and candidate
rows scored per search (median each), and checks every
cent of each of today's ranges (up to 30,000 cents) and the cent below it with the model."""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

import app.explain.counterfactual as today
from app.explain.splits import SplitIndex
from app.model.features import features_for
from app.model.predictor import ModelScorer
from bench.counterfactual import flagged_verdicts

RANK = {"approve": 0, "review": 1, "deny": 2}


def load_from(commit: str) -> Any:
    source = subprocess.run(
        ["git", "show", f"{commit}:app/explain/counterfactual.py"], check=True, capture_output=True, text=True
    ).stdout
    path = Path(tempfile.mkdtemp()) / "counterfactual_then.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("counterfactual_then", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["counterfactual_then"] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def run(commit: str, models: Path, count: int, seeds: list[int]) -> dict[str, Any]:
    scorer = ModelScorer(models)
    splits = SplitIndex.from_booster(scorer.booster)
    then, now = (
        load_from(commit).CounterfactualSearch(scorer, splits),
        today.CounterfactualSearch(scorer, splits),
    )
    flagged = [case for seed in seeds for case in flagged_verdicts(scorer, 6000, seed)[0]][:count]
    cpu: dict[str, list[float]] = {"then": [], "now": []}
    scored: dict[str, list[int]] = {"then": [], "now": []}  # candidate rows scored per search
    differ = wider = narrower = cents = bad = 0
    for i, (tx, state, _decision) in enumerate(flagged):
        results = {}
        for name in ("then", "now") if i % 2 else ("now", "then"):
            start = time.process_time()
            results[name] = (then if name == "then" else now).search(tx, state)
            cpu[name].append(time.process_time() - start)
            scored[name].append(results[name].candidates)
        a, b = results["then"], results["now"]
        if [(p.changes, p.decision, p.score) for p in a.proposals] != [
            (p.changes, p.decision, p.score) for p in b.proposals
        ] or (a.note, a.decision) != (b.note, b.decision):
            differ += 1
        for p, q in zip(a.proposals, b.proposals, strict=False):
            low_then = p.amount_from if p.amount_from is not None else p.changes.get("amount")
            low_now = q.amount_from if q.amount_from is not None else q.changes.get("amount")
            if low_then is not None and low_now is not None:
                wider, narrower = wider + (low_now < low_then), narrower + (low_now > low_then)
        for q in b.proposals:
            if q.amount_from is None:
                continue
            top, bottom = round(q.changes["amount"] * 100), round(q.amount_from * 100)
            if top - bottom > 30_000:
                continue
            amounts = [*range(bottom, top + 1), *([bottom - 1] if bottom > 1 else [])]
            rows = np.asarray([features_for({**tx, **q.changes, "amount": c / 100}, state) for c in amounts])
            decisions = scorer.decide(scorer.predict(rows)[1])
            inside = decisions[: top - bottom + 1]
            cents += len(inside)
            bad += any(RANK[d] > RANK[q.decision] for d in inside)
            bad += bottom > 1 and RANK[decisions[-1]] <= RANK[q.decision]  # the run goes on below

    def summary(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        return {
            "median_ms": 1000 * statistics.median(ordered),
            "p95_ms": 1000 * ordered[int(0.95 * len(ordered))],
        }

    return {
        "against": commit, "model_version": scorer.version, "verdicts": len(flagged), "seeds": seeds,
        "proposals_differ": differ, "ranges_wider": wider, "ranges_narrower": narrower,
        "range_cents_checked": cents, "ranges_wrong_or_not_maximal": bad,
        "cpu_then": summary(cpu["then"]), "cpu_now": summary(cpu["now"]),
        "cpu_ratio_medians": statistics.median(cpu["now"]) / statistics.median(cpu["then"]),
        "candidate_rows_median": {name: statistics.median(counts) for name, counts in scored.items()},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--against", required=True, help="the commit whose search to compare with")
    parser.add_argument("--models", type=Path, default=None)
    parser.add_argument("--count", type=int, default=250)
    parser.add_argument("--seeds", default="24,25,26")
    args = parser.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    models = args.models
    if models is None:
        from app.settings import get_settings

        models = get_settings().models_dir
    print(json.dumps(run(args.against, models, args.count, seeds), indent=2))


if __name__ == "__main__":
    main()
