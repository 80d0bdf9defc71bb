"""Clients nobody here wrote, against the real embedded broker (issue 23 point 5).

kafka-python and kafkajs (tests/foreign/, installed by `make test`) each produce transactions the
scorer then scores, and each reads fraudlens's own LZ4-compressed verdicts in a consumer group of
its own; without its LZ4 codec each fails with a clear error (so the verdicts are LZ4, and the
docs/operations.md is right to name the codec packages). A group that joins 15 s after another group read
and committed the verdicts still finds them: the topics users read keep time retention only.
The oracle is a plain librdkafka reader (harness.TopicReader), not the clients under test.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
import uuid
from collections.abc import Iterable
from typing import Any

import kafka.codec
import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition
from kafka import KafkaConsumer, KafkaProducer
from kafka.errors import UnsupportedCodecError

from app.model.generator import generate_transactions
from tests.integration.harness import REPO, Stack, wait_until

FOREIGN = REPO / "tests" / "foreign"
KAFKAJS_CLIENT = FOREIGN / "kafkajs_client.js"


def transactions(count: int, seed: int) -> list[dict[str, Any]]:
    return list(generate_transactions(count, seed=seed))


def verdicts_of(stack: Stack, ids: set[str], timeout: float = 60) -> dict[str, bytes]:
    """The oracle: every verdict for ``ids``, read by librdkafka without a group."""
    reader = stack.reader("verdicts")
    reader.read_until(lambda m: ids <= {x.key().decode() for x in m}, timeout, f"{len(ids)} verdicts")
    return {m.key().decode(): m.value() for m in reader.messages if m.key().decode() in ids}


# -- kafka-python --------------------------------------------------------------------------------


def kafka_python_send(stack: Stack, txs: Iterable[dict[str, Any]]) -> dict[str, tuple[int, int]]:
    """Produce LZ4 batches with kafka-python; returns txid -> (partition, offset) from the acks."""
    producer = KafkaProducer(bootstrap_servers=stack.bootstrap, compression_type="lz4", acks="all")
    try:
        futures = {
            tx["transaction_id"]: producer.send(
                "transactions", key=tx["card_id"].encode(), value=orjson.dumps(tx)
            )
            for tx in txs
        }
        producer.flush(30)
        acks = {txid: future.get(timeout=30) for txid, future in futures.items()}
    finally:
        producer.close(5)
    return {txid: (ack.partition, ack.offset) for txid, ack in acks.items()}


def kafka_python_group_reads(
    stack: Stack, group: str, ids: set[str], timeout: float = 60
) -> dict[str, bytes]:
    """Join ``group`` with kafka-python, read ``verdicts`` from the earliest retained record until
    every id is seen, commit, leave; returns txid -> value of what it read."""
    consumer = KafkaConsumer(
        "verdicts", bootstrap_servers=stack.bootstrap, group_id=group,
        auto_offset_reset="earliest", enable_auto_commit=False,
    )  # fmt: skip
    read: dict[str, bytes] = {}

    def has_all() -> bool:
        for records in consumer.poll(timeout_ms=200).values():
            read.update((r.key.decode(), r.value) for r in records)
        return ids <= read.keys()

    try:
        wait_until(has_all, timeout, f"kafka-python group {group} to read {len(ids)} verdicts", interval=0)
        consumer.commit()
    finally:
        consumer.close()
    return read


def test_kafka_python_produces_transactions_and_reads_their_lz4_verdicts(scored: Stack) -> None:
    txs = transactions(40, seed=2301)
    ids = {tx["transaction_id"] for tx in txs}

    acked = kafka_python_send(scored, txs)
    oracle = verdicts_of(scored, ids)
    read = kafka_python_group_reads(scored, f"kafka-python-{uuid.uuid4().hex[:8]}", ids)

    assert acked.keys() == ids
    assert {txid: read[txid] for txid in ids} == oracle  # byte for byte what librdkafka reads
    assert all(orjson.loads(oracle[txid])["transaction_id"] == txid for txid in ids)


def test_kafka_python_without_lz4_cannot_read_the_verdicts(
    scored: Stack, monkeypatch: pytest.MonkeyPatch
) -> None:
    txs = transactions(5, seed=2302)
    scored.produce_transactions(txs)
    verdicts_of(scored, {tx["transaction_id"] for tx in txs})
    monkeypatch.setattr(kafka.codec, "lz4", None)  # as if `lz4` were not installed

    with pytest.raises(UnsupportedCodecError, match="lz4"):
        kafka_python_group_reads(scored, f"no-lz4-{uuid.uuid4().hex[:8]}", {"never"}, timeout=30)


# -- kafkajs -------------------------------------------------------------------------------------


def kafkajs(stack: Stack, *args: str, lines: Iterable[Any] = (), lz4: bool = True) -> dict[str, Any]:
    """Run tests/foreign/kafkajs_client.js; returns its JSON answer (``error`` on failure)."""
    node = shutil.which("node")
    if node is None:
        pytest.fail("node is not on PATH: kafkajs needs Node.js 18+ (`make test` installs it)")
    if not (FOREIGN / "node_modules" / "kafkajs-lz4").is_dir():
        pytest.fail(f"kafkajs is not installed in {FOREIGN}: run `make test` (or `npm ci` there)")
    env = dict(os.environ, FRAUDLENS_KAFKAJS_LZ4="1" if lz4 else "0")
    done = subprocess.run(
        [node, str(KAFKAJS_CLIENT), stack.bootstrap, *args],
        input="".join(json.dumps(line) + "\n" for line in lines).encode(),
        capture_output=True, timeout=90, env=env, cwd=FOREIGN,
    )  # fmt: skip
    stdout = done.stdout.decode(errors="replace").strip()
    assert stdout, f"kafkajs_client.js printed nothing (exit {done.returncode}): {done.stderr.decode()}"
    answer: dict[str, Any] = json.loads(stdout.splitlines()[-1])
    assert (done.returncode == 0) == ("error" not in answer), (done.returncode, answer)
    return answer


def test_kafkajs_produces_transactions_and_reads_their_lz4_verdicts(scored: Stack) -> None:
    txs = transactions(40, seed=2303)
    ids = {tx["transaction_id"] for tx in txs}

    sent = kafkajs(
        scored, "produce", "transactions",
        lines=({"key": tx["card_id"], "value": orjson.dumps(tx).decode()} for tx in txs),
    )  # fmt: skip
    oracle = verdicts_of(scored, ids)
    answer = kafkajs(scored, "consume", "verdicts", f"kafkajs-{uuid.uuid4().hex[:8]}", "60000", lines=ids)

    assert sent == {"produced": len(txs)}
    assert "records" in answer, answer
    read = {r["key"]: r["value"].encode() for r in answer["records"] if r["key"] in ids}
    assert read == oracle


def test_kafkajs_without_kafkajs_lz4_cannot_read_the_verdicts(scored: Stack) -> None:
    txs = transactions(5, seed=2304)
    scored.produce_transactions(txs)
    verdicts_of(scored, {tx["transaction_id"] for tx in txs})

    answer = kafkajs(scored, "consume", "verdicts", f"no-lz4-{uuid.uuid4().hex[:8]}", "30000", lz4=False)

    assert answer == {"error": "KafkaJSNotImplemented: LZ4 compression not implemented"}


# -- retention: a group that joins later --------------------------------------------------------


def low_watermarks(stack: Stack, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": "watermarks"})
    try:
        count = stack.topic_partitions(topic)
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[0] for p in range(count)
        }
    finally:
        consumer.close()


def test_a_group_joining_15_s_after_another_read_the_verdicts_still_reads_them(stack: Stack) -> None:
    """Retention trims what every group has read (after a 10 s grace) on the input, but not on
    the topics users read: the control is `transactions`, read and committed by the scorer at
    the same time, which must be trimmed past this batch before the late group joins."""
    stack.start_worker("scorer")
    txs = transactions(30, seed=2305)
    ids = {tx["transaction_id"] for tx in txs}
    input_spots = kafka_python_send(stack, txs)
    oracle = verdicts_of(stack, ids)
    written = time.monotonic()
    kafka_python_group_reads(stack, "early-readers", ids)

    last_input = {p: max(o for q, o in input_spots.values() if q == p) for p, _ in input_spots.values()}

    def input_trimmed_and_15_s_passed() -> bool:
        low = low_watermarks(stack, "transactions")
        return time.monotonic() - written >= 15 and all(low[p] > o for p, o in last_input.items())

    wait_until(input_trimmed_and_15_s_passed, 40, "retention to trim the consumed input", interval=0.5)
    trimmed = {p: low for p, low in low_watermarks(stack, "verdicts").items() if low > 0}
    assert not trimmed, f"verdicts read by one group were trimmed from the others: {trimmed}"
    late = kafka_python_group_reads(stack, "late-readers", ids, timeout=30)

    assert {txid: late[txid] for txid in ids} == oracle
