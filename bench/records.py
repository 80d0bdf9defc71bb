"""Records per transaction: what one fully explained transaction costs the broker, in records.

The real stack (embedded broker, one scorer, one explainer) gets N generator transactions at a
steady rate; once every one of them has its ``complete`` explanation, the records added to every
topic the broker holds (end offsets after − before, so changelogs, work queues and outputs
alike; ``__``-prefixed internal topics aside) are divided by N. The input itself (one record on
``transactions``, written by the producer, not the stack) is reported but not in the total, as
in issue 18's 10.9. A count, not a timing: it does
not depend on the machine's speed. Target (issue 18, target 3): ≤ 6 records per transaction,
with every status (pending, calculating, complete) still published for each transaction.

Issue 18 set that target for one kind of explanation; issue 20 adds the counterfactual of each
deny and review (by default), whose own three statuses are published too. So the same
transactions are counted twice: with contributions alone (``FRAUDLENS_EXPLAIN_COUNTERFACTUAL_
DECISIONS=[]``: the target) and as the explainer runs by default (reported: the total and the
records per counterfactual, the difference divided by the counterfactuals published).

    python -m bench.records [--quick] [--models DIR]
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Consumer, TopicPartition

from app.model.generator import generate_transactions
from app.records.kinds import COUNTERFACTUAL, kind_of
from bench.common import CONTRIBUTIONS_ONLY, start_scorer, target
from tests.integration.harness import Stack, TopicReader, wait_until

RECORDS_TARGET = 6.0
STATUSES = ("pending", "calculating", "complete")
INPUT = "transactions"  # the producer's own records: reported, not counted in the total


def end_offsets(bootstrap: str) -> dict[str, int]:
    """Sum of the end offsets of every partition, per topic the broker knows (internal ones aside)."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-records", "log_level": 2})
    try:
        metadata = consumer.list_topics(timeout=10)
        totals: dict[str, int] = {}
        for name, topic in sorted(metadata.topics.items()):
            if name.startswith("__"):
                continue
            partitions = [TopicPartition(name, p) for p in topic.partitions]
            totals[name] = sum(consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in partitions)
        return totals
    finally:
        consumer.close()


def settled_offsets(bootstrap: str) -> dict[str, int]:
    """End offsets once two reads a second apart agree (late changelog acks, commits done)."""
    last: list[dict[str, int]] = [end_offsets(bootstrap)]

    def stable() -> dict[str, int] | None:
        time.sleep(1.0)  # the interval between two reads of a quiet broker, not a wait for work
        now = end_offsets(bootstrap)
        same = now == last[0]
        last[0] = now
        return now if same else None

    settled: dict[str, int] = wait_until(stable, 60, "the broker's end offsets to settle", interval=0)
    return settled


def statuses_of(updates: TopicReader, wanted: set[str]) -> dict[str, set[str]]:
    """The statuses published on ``explanation.updates`` for each wanted transaction."""
    seen: dict[str, set[str]] = {txid: set() for txid in wanted}
    for message in updates.messages:
        update = orjson.loads(message.value())
        if update.get("transaction_id") in seen:
            seen[update["transaction_id"]].add(update.get("status"))
    return seen


def send_paced(stack: Stack, transactions: list[dict[str, Any]], rate: float) -> None:
    """Every transaction, ``rate`` per second by a schedule (n sent by t = rate × t)."""
    producer = stack.producer()
    began = time.monotonic()
    for n, tx in enumerate(transactions):
        while time.monotonic() - began < n / rate:
            producer.poll(0.001)
        producer.produce("transactions", key=tx["card_id"].encode(), value=orjson.dumps(tx))
        producer.poll(0)
    assert producer.flush(30) == 0, "producer did not flush"


def counterfactuals_of(updates: TopicReader, wanted: set[str]) -> tuple[int, int]:
    """(routed, complete): the wanted transactions with a counterfactual pending, and complete."""
    seen: dict[str, set[str]] = {}
    for message in updates.messages:
        update = orjson.loads(message.value())
        if kind_of(update) == COUNTERFACTUAL and update.get("transaction_id") in wanted:
            seen.setdefault(update["transaction_id"], set()).add(update.get("status"))
    return len(seen), sum("complete" in statuses for statuses in seen.values())


def count(models: Path, n: int, rate: float, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Broker + scorer + one explainer (``env``: its settings); records per topic added by ``n``
    explained transactions."""
    with tempfile.TemporaryDirectory(prefix="fraudlens-bench-records-") as tmp:
        stack = Stack(root=Path(tmp), models_dir=models)
        try:
            stack.start_broker()
            start_scorer(stack)
            stack.start_worker("explainer", **(env or {}))
            updates = stack.reader("explanation.updates")
            warm = {tx["transaction_id"] for tx in generate_transactions(20, seed=1)}  # start_scorer's
            updates.read_until(
                lambda _: all("complete" in s for s in statuses_of(updates, warm).values()),
                180,
                "the warm-up's explanations",
            )
            before = settled_offsets(stack.bootstrap)
            transactions = list(generate_transactions(n, seed=23))
            wanted = {tx["transaction_id"] for tx in transactions}
            send_paced(stack, transactions, rate)
            updates.read_until(
                lambda _: all("complete" in s for s in statuses_of(updates, wanted).values()),
                600,
                f"the complete explanation of each of {n} transactions",
            )

            def counterfactuals_complete(_: list[Any]) -> bool:
                routed, complete = counterfactuals_of(updates, wanted)
                return routed == complete

            updates.read_until(counterfactuals_complete, 300, "every counterfactual routed to be complete")
            after = settled_offsets(stack.bootstrap)
            published = Counter(s for found in statuses_of(updates, wanted).values() for s in found)
            counterfactuals = counterfactuals_of(updates, wanted)[1]
        finally:
            stack.stop_all()
    added = {topic: after.get(topic, 0) - before.get(topic, 0) for topic in sorted(after)}
    return {
        "transactions": n, "rate": rate,
        "records": {topic: added[topic] for topic in added if added[topic]},
        "per_transaction": {topic: round(added[topic] / n, 3) for topic in added if added[topic]},
        "total_per_transaction": round(sum(v for t, v in added.items() if t != INPUT) / n, 3),
        "transactions_with_status": {status: published[status] for status in STATUSES},
        "counterfactuals": counterfactuals,
    }  # fmt: skip


def run(quick: bool, models: Path, out: Path) -> dict[str, Any]:
    del out  # no plots: a count per topic
    n = 200 if quick else 1000
    result = count(models, n, 100.0, CONTRIBUTIONS_ONLY)
    default = count(models, n, 100.0)
    total = result["total_per_transaction"]
    extra = default["total_per_transaction"] - total
    per_counterfactual = extra * n / default["counterfactuals"] if default["counterfactuals"] else None
    every_status = all(result["transactions_with_status"][s] == result["transactions"] for s in STATUSES)
    targets = {
        "records_per_tx_le_6": target(
            f"broker records per explained transaction ≤ {RECORDS_TARGET:g} (end offsets, "
            f"{result['transactions']} transactions)",
            total,
            RECORDS_TARGET,
        ),
        "every_status_published": target(
            "share of transactions with pending, calculating and complete published",
            1.0 if every_status else 0.0,
            1.0,
            higher_is_better=True,
        ),
    }
    summary = {
        "records_per_tx": total,
        "per_topic": result["per_transaction"],
        "transactions": result["transactions"],
        "default_records_per_tx": default["total_per_transaction"],
        "counterfactuals": default["counterfactuals"],
        "records_per_counterfactual": None if per_counterfactual is None else round(per_counterfactual, 2),
    }
    raw = {"contributions_only": result, "default": default}
    return {"summary": summary, "targets": targets, "raw": raw, "plots": []}


if __name__ == "__main__":
    from bench.__main__ import main_one

    main_one("records")
