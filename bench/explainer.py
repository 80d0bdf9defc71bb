"""``make bench-explainer``: explanation throughput (per row vs batched), cache hit rate on
generator traffic, and the verdict → complete explanation gap per priority on the real stack.
Writes bench/results-explainer.json (``--quick``: results-explainer-quick.json).

    python -m bench.explainer [--quick] [--models DIR] [--rate 500]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from app.explain import ExplainerCache
from app.explain.messages import explain_request
from app.explain.work import compute, prepare
from app.model.generator import generate_transactions
from app.model.scorer import ModelScorer
from app.scoring import BatchScorer, Incoming
from tests.integration.harness import Stack, SteadyProducer

OUT = Path(__file__).resolve().parent
STAMP = "2026-11-28T12:00:00.000000Z"


def _requests(models: Path, count: int, seed: int) -> list[dict[str, Any]]:
    transactions = list(generate_transactions(count, seed=seed))
    scorer = BatchScorer(ModelScorer(models), {}, {}, 65536, time.time)
    batch = [
        Incoming(tx["card_id"].encode(), orjson.dumps(tx), "transactions", 0, i)
        for i, tx in enumerate(transactions)
    ]
    verdicts = [orjson.loads(value) for _, value in scorer.score(batch).verdicts]
    return [explain_request(v, "low", STAMP, method="tree") for v in verdicts]


def compute_rates(models: Path, rows: int) -> dict[str, Any]:
    """Explanations/s of the worker's compute path (prepare + SHAP + reasons), one thread."""
    explainers = ExplainerCache(models)
    requests = _requests(models, rows + 2000, seed=3)[-rows:]
    explainers.get(requests[0]["model_version"])
    out: dict[str, Any] = {"rows": rows}
    for batch in (1, 16, 64, 256):
        started = time.perf_counter()
        for i in range(0, rows, batch):
            chunk = requests[i : i + batch]
            compute(prepare(explainers, chunk, "tree"), [None] * len(chunk))
        out[f"batch_{batch}_per_s"] = round(rows / (time.perf_counter() - started), 1)
    return out


def cache_hit_rate(models: Path, count: int) -> dict[str, Any]:
    """Share of generator requests whose exact signature an earlier request already had."""
    explainer = ExplainerCache(models).get()
    requests = _requests(models, count, seed=9)
    prepared = prepare(ExplainerCache(models), requests, "tree")
    seen: set[str] = set()
    hits = 0
    for item in prepared:
        hits += item.cache_key in seen
        seen.add(str(item.cache_key))
    return {"requests": len(prepared), "hits": hits, "hit_rate": round(hits / len(prepared), 4),
            "model_version": explainer.version}  # fmt: skip


def _percentiles(values: list[float]) -> dict[str, float]:
    array = np.asarray(values)
    return {
        "n": int(array.size),
        **{f"p{q}_ms": round(float(np.percentile(array, q)), 1) for q in (50, 95)},
        "max_ms": round(float(array.max()), 1),
    }


def end_to_end(models: Path, rate: float, seconds: float) -> dict[str, Any]:
    """Broker + scorer + one explainer; paced transactions; the gap per priority."""
    with tempfile.TemporaryDirectory(prefix="fraudlens-bench-explainer-") as tmp:
        stack = Stack(root=Path(tmp), models_dir=models)
        try:
            stack.start_broker()
            stack.start_worker("scorer")
            stack.start_worker("explainer", FRAUDLENS_EXPLAIN_STATS_EVERY_S="5")
            updates = stack.reader("explanation.updates")
            load = SteadyProducer(stack, rate=rate, seed=17)
            load.start()
            time.sleep(seconds)  # the measured window (load runs meanwhile)
            load.stop.set()
            load.join(30)
            sent = {txid for _, txid in load.sent}
            done_by = time.monotonic() + max(120.0, 3 * seconds)
            with contextlib.suppress(AssertionError):  # an incomplete run shows in "complete"
                updates.read_until(
                    lambda _: (
                        sent <= {u["transaction_id"] for u in updates.values() if u["status"] == "complete"}
                    ),
                    max(1.0, done_by - time.monotonic()),
                    "every explanation",
                )
            finals = [u for u in updates.values() if u["status"] == "complete"]
            gaps: dict[str, list[float]] = {}
            for update in finals:
                gaps.setdefault(update["priority"], []).append(update["timings"]["verdict_to_complete_ms"])
            return {
                "rate": rate, "seconds": seconds, "sent": len(sent), "complete": len(finals),
                "cache_hits": sum(bool(u["cache_hit"]) for u in finals),
                "gap_by_priority": {p: _percentiles(v) for p, v in sorted(gaps.items())},
            }  # fmt: skip
        finally:
            stack.stop_all()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short run; asserts nothing")
    parser.add_argument("--models", type=Path, default=Path("models"), help="model registry")
    parser.add_argument("--rate", type=float, default=500.0, help="transactions per second")
    args = parser.parse_args()
    results = {
        "compute": compute_rates(args.models, 256 if args.quick else 2048),
        "cache": cache_hit_rate(args.models, 2000 if args.quick else 20_000),
    }
    results["end_to_end"] = end_to_end(args.models, args.rate, 10.0 if args.quick else 60.0)
    name = "results-explainer-quick" if args.quick else "results-explainer"
    (OUT / f"{name}.json").write_text(json.dumps(results, indent=1))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
