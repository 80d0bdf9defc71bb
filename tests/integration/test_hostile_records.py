"""Hostile records on every topic an outsider (or a misconfigured client) can write, against the
real embedded broker: every role keeps running, every valid transaction gets its verdict, every
rejected one exactly one bounded DLQ record (issue 17, point 1)."""

from __future__ import annotations

from typing import Any

import orjson
from confluent_kafka import Producer

from app.contracts import validate_message
from app.model.generator import generate_transactions
from tests.integration.harness import Stack, wait_until

# What the embedded broker accepts as one record (measured: a 1,048,000-byte value is taken,
# 1,048,576 is refused with MSG_SIZE_TOO_LARGE: its limit is 1 MiB per record batch).
BROKER_MAX_VALUE = 1_048_000


def _hostile_producer(stack: Stack, compression: str = "none") -> Producer:
    """A client that lets the broker, not itself, decide what is too large."""
    return Producer({
        "bootstrap.servers": stack.bootstrap, "acks": "all", "linger.ms": 20,
        "message.max.bytes": 20_000_000, "compression.type": compression,
    })  # fmt: skip


def _send(producer: Producer, topic: str, records: list[tuple[bytes | None, bytes | None]]) -> list[Any]:
    """Produce and flush; the delivered messages (partition and offset known), in order."""
    delivered: list[Any] = []
    failures: list[Any] = []

    def acked(err: Any, message: Any) -> None:
        (failures if err else delivered).append(err or message)

    for key, value in records:
        producer.produce(topic, key=key, value=value, on_delivery=acked)
        producer.poll(0)
    assert producer.flush(60) == 0, "producer did not flush"
    assert not failures, failures[:3]
    return delivered


def test_huge_and_inflating_transactions_get_bounded_dlq_records(stack: Stack) -> None:
    """A value near the broker's limit, and an lz4 batch whose values inflate far past it, each
    get one DLQ record that fits; the scorer stays up and scores what follows."""
    scorer = stack.start_worker("scorer")
    transactions = list(generate_transactions(20, seed=171))
    plain = _send(_hostile_producer(stack), "transactions", [(b"card-big", b"x" * BROKER_MAX_VALUE)])
    # 4 MB of zeros per value compresses to ~16 KB: the broker takes the batch.
    inflating = _send(_hostile_producer(stack, "lz4"), "transactions", [(b"card-zip", bytes(4_000_000))] * 3)
    stack.produce_transactions(transactions)

    verdicts, dlq = stack.reader("verdicts"), stack.reader("transactions.dlq")
    verdicts.read_until(lambda m: len(m) >= 20, 120, "20 verdicts after the huge records")
    records = dlq.read_until(lambda m: len(m) >= 4, 60, "4 DLQ records")
    assert scorer.alive(), scorer.tail()
    sources = sorted((r["source"]["partition"], r["source"]["offset"]) for r in dlq.values())
    assert sources == sorted((m.partition(), m.offset()) for m in plain + inflating)
    for message, record in zip(records, dlq.values(), strict=True):
        validate_message("dlq", record)
        assert len(message.value()) < 64_000, len(message.value())
        assert record["reason_code"] == "oversized"
        assert record["original_value_truncated"] is True
        assert record["original_value_bytes"] in (BROKER_MAX_VALUE, 4_000_000)
    assert {orjson.loads(m.value())["transaction_id"] for m in verdicts.messages} == {
        tx["transaction_id"] for tx in transactions
    }
    wait_until(lambda: scorer.alive(), 1, "the scorer to be alive")
