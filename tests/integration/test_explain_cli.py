"""`fraudlens explain TXID`: an on-demand explanation of a sampled-out verdict, end to end."""

from __future__ import annotations

import json
import subprocess
import sys

import orjson

from app.model.generator import generate_transactions
from tests.integration.harness import REPO, Stack


def explain(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli.main", "explain", *args],
        cwd=REPO, env=stack.env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def test_explain_on_demand_then_again_then_unknown_and_bad_ids(stack: Stack) -> None:
    stack.start_worker("scorer")
    stack.start_worker("explainer", FRAUDLENS_EXPLAIN_LOW_SAMPLE_RATE="0")  # nothing low auto-explained
    stack.produce_transactions(generate_transactions(50, seed=71))
    verdicts = stack.reader("verdicts").read_until(lambda m: len(m) >= 50, 120, "verdicts")
    low = next(
        v
        for v in (orjson.loads(m.value()) for m in verdicts)
        if v["decision"] == "approve" and v["amount"] < 100
    )
    done = explain(stack, low["transaction_id"], "--json")
    assert done.returncode == 0, done.stderr
    update = json.loads(done.stdout)
    assert update["status"] == "complete" and update["priority"] == "high"
    assert update["model_version"] == low["model_version"]
    total = update["base_value"] + sum(update["contributions"].values())
    assert abs(total - update["raw_score"]) < 1e-6 and len(update["top_features"]) == 3
    again = explain(stack, low["transaction_id"])  # already explained: found at once, readable form
    assert again.returncode == 0 and f"{low['transaction_id']}: complete" in again.stdout
    unknown = explain(stack, "tx-never-sent", "--timeout", "3")
    assert unknown.returncode == 1 and unknown.stderr.strip().startswith("Error: no explanation")
    bad = explain(stack, "not an id!")
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "TRANSACTION_ID" in bad.stderr
