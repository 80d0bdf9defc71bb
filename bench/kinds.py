"""Kinds of explanation (issue 20): per kind, the CPU of one explanation and the gap per priority
at 200 tx/s end to end, and the counterfactual's validity share on generator deny/review verdicts.

- CPU per explanation, in one process (``time.process_time``): contributions through the
  worker's compute path in batches of 64 (prepare + SHAP + reasons, per explanation); a
  counterfactual as one search per flagged verdict (``bench.counterfactual.measure``: the same
  figures, with the share of reviews and denies that get a verified approve proposal).
- End to end: broker, scorer and one explainer, paced generator transactions at 200 tx/s, with
  counterfactuals routed for deny and review (``FRAUDLENS_EXPLAIN_COUNTERFACTUAL_DECISIONS``) and
  without, alternating (on, off, on, off; the short form: on once); per kind and priority,
  verdict → complete p50/p95 of what completed, and complete/routed.

    python -m bench.kinds [--quick] [--models DIR]
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson

from app.explain import ExplainerCache
from app.explain.work import compute, prepare
from bench.counterfactual import measure
from bench.explainer import PacedProducer, _percentiles, _requests, _wait
from tests.integration.harness import Stack

KINDS_ON = {"FRAUDLENS_EXPLAIN_COUNTERFACTUAL_DECISIONS": '["deny","review"]'}
RATE = 200.0


def contributions_cpu(models: Path, rows: int, batch: int = 64) -> dict[str, Any]:
    explainers = ExplainerCache(models)
    requests = _requests(models, rows + 500, seed=3)[-rows:]
    explainers.get(requests[0]["model_version"]).warm("tree")
    per: list[float] = []
    for i in range(0, rows, batch):
        chunk = requests[i : i + batch]
        started = time.process_time()
        compute(prepare(explainers, chunk, "tree"), [None] * len(chunk))
        per.append((time.process_time() - started) / len(chunk))
    return {"rows": rows, "batch": batch, "cpu_ms_median": round(1000 * statistics.median(per), 3)}


def _kind(update: dict[str, Any]) -> str:
    return str(update.get("kind") or "contributions")


def end_to_end(models: Path, seconds: float, kinds_on: bool = True) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fraudlens-bench-kinds-") as tmp:
        stack = Stack(root=Path(tmp), models_dir=models)
        try:
            stack.start_broker()
            stack.start_worker("scorer")
            kinds = KINDS_ON if kinds_on else {"FRAUDLENS_EXPLAIN_COUNTERFACTUAL_DECISIONS": "[]"}
            stack.start_worker("explainer", FRAUDLENS_EXPLAIN_STATS_EVERY_S="1", **kinds)
            updates = stack.reader("explanation.updates")
            load = PacedProducer(stack, RATE, seed=21)
            began = time.monotonic()
            load.start()
            time.sleep(seconds)
            load.stop.set()
            load.join(30)
            offered = load.sent / (time.monotonic() - began)

            def state() -> tuple[dict[tuple[str, str], str], dict[tuple[str, str], dict[str, Any]]]:
                routed, complete = {}, {}
                for message in updates.messages:
                    update = orjson.loads(message.value())
                    key = (update["transaction_id"], _kind(update))
                    routed[key] = update["priority"]
                    if update["status"] == "complete":
                        complete[key] = update
                return routed, complete

            def urgent_done() -> bool:
                updates.poll(0.5)
                routed, complete = state()
                return all(k in complete for k, p in routed.items() if p != "low")

            _wait(urgent_done, 120, interval=0)
            updates.poll(2.0)
            routed, complete = state()
            gaps: dict[str, dict[str, Any]] = {}
            for kind in ("contributions", "counterfactual"):
                for priority in ("high", "normal", "low"):
                    keys = [k for k, p in routed.items() if k[1] == kind and p == priority]
                    if not keys:
                        continue
                    done = [complete[k]["timings"]["verdict_to_complete_ms"] for k in keys if k in complete]
                    gaps[f"{kind} {priority}"] = {
                        "routed": len(keys),
                        "complete": len(done),
                        **_percentiles(done),
                    }
            return {"rate": RATE, "offered_tx_per_s": round(offered, 1), "seconds": seconds,
                    "counterfactuals": kinds_on, "sent": load.sent, "gap": gaps}  # fmt: skip
        finally:
            stack.stop_all()


def run(quick: bool, models: Path, out: Path) -> dict[str, Any]:
    contributions = contributions_cpu(models, 128 if quick else 1024)
    counterfactual = measure(models, 3000 if quick else 20_000, seed=23)
    runs = [end_to_end(models, 5.0)] if quick else [end_to_end(models, 30.0, on) for on in (True, False) * 2]
    e2e = runs[0]
    share = counterfactual["approve_proposal_share"]
    flagged = counterfactual["flagged_by_decision"]
    valid = sum((share[d] or 0) * flagged[d] for d in flagged) / max(1, sum(flagged.values()))
    summary = {
        "cpu_ms_per_explanation": {
            "contributions": contributions["cpu_ms_median"],
            "counterfactual": round(counterfactual["cpu_ms_median"], 1),
            "counterfactual_p95": round(counterfactual["cpu_ms_p95"], 1),
        },
        "validity_share": round(valid, 4),
        "validity_by_decision": {d: round(v, 4) if v is not None else None for d, v in share.items()},
        "flagged": counterfactual["flagged"],
        "gap_ms_at_200": {
            name: [g.get("p50_ms"), g.get("p95_ms"), f"{g['complete']}/{g['routed']}"]
            for name, g in e2e["gap"].items()
        },
    }
    counterfactual_keys = [g for name, g in e2e["gap"].items() if name.startswith("counterfactual")]
    targets = {
        "counterfactuals_complete": {
            "target": "every routed counterfactual completes",
            "value": sum(g["complete"] for g in counterfactual_keys),
            "pass": bool(counterfactual_keys)
            and all(g["complete"] == g["routed"] for g in counterfactual_keys),
        }
    }
    summary["gap_ms_p95_by_run"] = {
        f"{i + 1} {'on' if run['counterfactuals'] else 'off'}": {
            name: g.get("p95_ms") for name, g in run["gap"].items()
        }
        for i, run in enumerate(runs)
    }
    raw = {"contributions": contributions, "counterfactual": counterfactual, "end_to_end": runs}
    return {"summary": summary, "targets": targets, "raw": raw, "plots": []}


if __name__ == "__main__":
    from bench.__main__ import main_one

    main_one("kinds")
