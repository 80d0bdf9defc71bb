"""`fraudlens tables` on the real stack: the same records while the workers run and after they
stopped, keys owned by either of two explainers, valid JSON for scripts."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import orjson

from app.model.generator import generate_transactions
from tests.integration.harness import REPO, Stack, counterfactual_decisions, of_kind

COUNT = 200


def tables(stack: Stack, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "app.cli.main", "tables", *args],
        cwd=REPO, env=stack.env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip


def as_json(done: subprocess.CompletedProcess[str]) -> Any:
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_tables_while_running_and_after_stop(stack: Stack) -> None:
    stack.start_worker("scorer")
    explainers = [
        stack.start_worker("explainer", FRAUDLENS_INSTANCE_ID=name, FRAUDLENS_EXPLAIN_STATS_EVERY_S="1")
        for name in ("a", "b")
    ]
    stack.produce_transactions(generate_transactions(COUNT, seed=91))
    verdict_reader = stack.reader("verdicts")
    verdict_reader.read_until(lambda m: len({x.key() for x in m}) >= COUNT, 120, "every verdict")
    verdicts = {m.key().decode(): orjson.loads(m.value()) for m in verdict_reader.messages}
    # every verdict's contributions, and a counterfactual for each decision the explainers'
    # settings route one for (deny and review by default; an update without a kind is a contributions one)
    searched = {t for t, v in verdicts.items() if v["decision"] in counterfactual_decisions()}
    updates = stack.reader("explanation.updates")

    def complete(kind: str) -> dict[str, dict[str, Any]]:
        return {u["transaction_id"]: u for u in of_kind(updates.values(), kind) if u["status"] == "complete"}

    updates.read_until(
        lambda _: len(complete("contributions")) >= COUNT and searched <= set(complete("counterfactual")),
        240,
        "every explanation complete",
    )
    finals = complete("contributions")
    picked = sorted(finals)[:: COUNT // 8]  # spread over partitions, so over both explainers

    running = {txid: as_json(tables(stack, "get", "explanations", txid)) for txid in picked}
    for txid, row in running.items():
        assert row["status"] == "complete" and row["priority"] == finals[txid]["priority"]
        assert row["explanation"]["contributions"] == finals[txid]["contributions"]
    assert as_json(tables(stack, "get", "predictions", picked[0])) == verdicts[picked[0]]

    page = as_json(tables(stack, "scan", "explanations", "--status", "complete", "--limit", "5", "--json"))
    assert len(page) == 5 and all(item["value"]["status"] == "complete" for item in page)
    stats = as_json(tables(stack, "stats", "explanations", "--json"))[0]
    assert stats["keys"] == COUNT + len(searched) and stats["status"] == {"complete": COUNT + len(searched)}
    by_kind = {
        "contributions": {"complete": COUNT},
        **({"counterfactual": {"complete": len(searched)}} if searched else {}),
    }
    assert stats["kinds"] == by_kind, stats["kinds"]
    assert sum(1 for n in stats["keys_per_partition"].values() if n) > 1

    for explainer in explainers:
        explainer.stop()
    stopped = {txid: as_json(tables(stack, "get", "explanations", txid)) for txid in picked}
    assert stopped == running
    missing = tables(stack, "get", "explanations", "tx-never-sent")
    assert (
        missing.returncode == 1 and missing.stderr.strip() == "Error: no key 'tx-never-sent' in explanations"
    )
