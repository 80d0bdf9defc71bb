"""Every role rides through a broker outage (issue 23, found 2 and point 2).

The broker (with its noida-db) is SIGKILLed while the roles are still starting, stays away for a
while and is started again on the same port and data dir. The scorer must ride through on its
own (same pid); the explainer rides through or exits non-zero with one clear line, and then a
supervisor (the harness's ``Restart=on-failure``) starts it again. Afterwards every transaction
sent, before or after the outage, has its verdict and a complete explanation (every verdict is
explained: the default low-priority sample rate is 1). The oracle is the set of transactions the
broker acked to this test and the topics read back, not the roles' own view.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest
from confluent_kafka import Consumer, TopicPartition

from app.model.generator import generate_transactions
from tests.integration.harness import (
    Stack,
    Supervisor,
    TopicReader,
    broker_tree,
    start_broker_on,
    still_running,
    wait_until,
)

OUTAGE_S = 20.0  # how long the broker stays away (the fault's length, not a synchronisation)


@pytest.fixture
def outage(tmp_path: Path, models_dir: Path) -> Iterator[tuple[Stack, Supervisor]]:
    stack = Stack(root=tmp_path, models_dir=models_dir)
    start_broker_on(stack, tmp_path / "data" / "broker")
    supervisor = Supervisor(stack)
    try:
        yield stack, supervisor
    finally:
        supervisor.stop()
        stack.stop_all()


def explained(reader: TopicReader) -> set[str]:
    return {orjson.loads(m.value())["transaction_id"] for m in reader.poll(0.2) if b'"complete"' in m.value()}


def kill_broker(stack: Stack) -> list[str]:
    """SIGKILL the running broker and its noida-db; returns what of them still runs after."""
    broker = next(p for p in reversed(stack.processes) if p.name == "broker" and p.alive())
    tree = broker_tree(broker)
    broker.kill()  # SIGKILL it and every child it had
    psutil.wait_procs(tree, timeout=10)
    return still_running(tree)


def send(stack: Stack, transactions: list[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """Produce and wait for the acks: txid -> (partition, offset) the broker acked."""
    acked: dict[str, tuple[int, int]] = {}

    def on_delivery(err: Any, message: Any) -> None:
        if err is None:
            acked[orjson.loads(message.value())["transaction_id"]] = (message.partition(), message.offset())

    producer = stack.producer()
    for tx in transactions:
        producer.produce(
            "transactions", key=tx["card_id"].encode(), value=orjson.dumps(tx), on_delivery=on_delivery
        )
    assert producer.flush(30) == 0 and len(acked) == len(transactions)
    return acked


def lost_by_broker(stack: Stack, acked: dict[str, tuple[int, int]]) -> set[str]:
    """Acked transactions the restarted broker no longer has: at or above its high watermark."""
    consumer = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": "outage-probe"})
    try:
        partitions = {p for p, _ in acked.values()}
        high = {
            p: consumer.get_watermark_offsets(TopicPartition("transactions", p), timeout=10)[1]
            for p in partitions
        }
    finally:
        consumer.close()
    return {txid for txid, (p, offset) in acked.items() if offset >= high[p]}


def explainer_starting(stack: Stack, supervisor: Supervisor) -> bool:
    """The explainer's Faust worker has begun starting its services (the broker in use)."""
    process = supervisor.current("explainer")
    return process.log.exists() and "[^Worker]: Starting" in process.log.read_text(errors="replace")


@pytest.mark.parametrize("moment", ["at-once", "faust-starting"])
def test_broker_killed_while_roles_start(outage: tuple[Stack, Supervisor], moment: str) -> None:
    """The broker is SIGKILLed right after the first transactions were acked (``at-once``: the
    roles are still importing) or once the explainer's Faust worker starts its services."""
    stack, supervisor = outage
    transactions = list(generate_transactions(170, seed=23))
    scorer = supervisor.start_role("scorer", "scorer")
    supervisor.start_role("explainer", "explainer")
    acked = send(stack, transactions[:20])
    if moment == "faust-starting":
        wait_until(
            lambda: explainer_starting(stack, supervisor), 120, "the explainer's Faust worker to start"
        )
    assert scorer.alive() and supervisor.current("explainer").alive(), "roles exited before the fault"
    assert kill_broker(stack) == [], "the broker's processes outlived SIGKILL"
    time.sleep(OUTAGE_S)  # the outage (the roles are starting meanwhile)
    start_broker_on(stack, stack.root / "data" / "broker")
    back = time.monotonic()
    lost = lost_by_broker(stack, acked)
    acked.update(send(stack, transactions[20:]))

    wanted = set(acked) - lost
    verdicts, updates = stack.reader("verdicts"), stack.reader("explanation.updates")
    verdicts.read_until(lambda m: wanted <= {x.key().decode() for x in m}, 180, "every verdict")
    verdict_s = time.monotonic() - back
    wait_until(lambda: wanted <= explained(updates), 240, "every explanation complete", interval=0.5)
    print(f"\n[{moment}] acked {len(acked)}, lost by the broker's SIGKILL {len(lost)}; after it came back: "
          f"verdicts in {verdict_s:.1f} s, explanations in {time.monotonic() - back:.1f} s; "
          f"restarts {supervisor.restarts()}")  # fmt: skip

    scorer_log = scorer.log.read_text(errors="replace")
    assert "|FAIL|" not in scorer_log, "the scorer logged librdkafka's reconnect attempts one by one"
    # One line per outage (none if the scorer was still importing while the broker was away).
    assert scorer_log.count("broker unreachable for") <= 2, scorer.tail()
    assert_rode_through_or_exited_clearly(supervisor, "scorer", {75: "failed for good"})
    assert_rode_through_or_exited_clearly(supervisor, "explainer", {69: "worker stopped"})


def assert_rode_through_or_exited_clearly(supervisor: Supervisor, name: str, allowed: dict[int, str]) -> None:
    """The role is running, and every exit it was restarted after had an allowed code and its
    one clear line (the scorer may exit only when its producer finds the broker lost acked
    writes: exit 75; the Faust explainer where Faust cannot retry: exit 69)."""
    assert supervisor.current(name).alive(), supervisor.current(name).tail()
    logs = {p.pid: p for p in supervisor.stack.processes}
    for pid, code in supervisor.restarts().get(name, []):
        text = logs[pid].log.read_text(errors="replace")
        assert code in allowed and allowed[code] in text, (
            f"{name} pid {pid} exited {code}:\n{logs[pid].tail()}"
        )
