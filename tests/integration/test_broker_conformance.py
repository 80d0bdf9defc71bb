"""Broker conformance: what Faust and our clients need from the embedded broker, proven on it."""

from __future__ import annotations

import os
import time
from collections import defaultdict
from typing import Any

import orjson
import psutil
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient

from app.model.features import apply_transaction, features_for
from app.model.generator import generate_transactions
from tests.integration.harness import Process, Stack, SteadyProducer, TopicReader, wait_until


def test_high_watermark_after_multi_record_batches(stack: Stack) -> None:
    producer = stack.producer()
    for _ in range(1000):
        producer.produce("transactions", value=b"x" * 50, key=b"k", partition=0)  # batched by linger
    assert producer.flush(30) == 0
    consumer = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": "hw"})
    low, high = consumer.get_watermark_offsets(TopicPartition("transactions", 0), timeout=10)
    assert (low, high) == (0, 1000)
    reader = stack.reader("transactions")
    reader.read_until(lambda m: len(m) >= 1000, 30, "1,000 records")
    assert [m.offset() for m in reader.messages if m.partition() == 0] == list(range(1000))
    consumer.close()


def test_topics_have_configured_partitions(tmp_path: Any, models_dir: Any) -> None:
    stack = Stack(root=tmp_path, models_dir=models_dir)
    try:
        stack.processes.append(_broker_with_partitions(stack, 5))
        stack.start_worker("scorer", FRAUDLENS_PARTITIONS="5")
        stack.produce_transactions(generate_transactions(20, seed=1))
        stack.reader("verdicts").read_until(lambda m: len(m) >= 20, 90, "verdicts")
        for topic in (
            "transactions",
            "verdicts",
            "transactions.dlq",
            f"{stack.app_id}-predictions-changelog",
            f"{stack.app_id}-card_activity-changelog",
        ):
            assert stack.topic_partitions(topic) == 5, topic
    finally:
        stack.stop_all()


def _broker_with_partitions(stack: Stack, partitions: int) -> Any:
    ready = stack.root / "ready"
    process = stack.spawn(
        "broker",
        ["broker", "--port", str(stack.broker_port), "--ready-file", str(ready)],
        FRAUDLENS_PARTITIONS=str(partitions),
    )
    stack.processes.pop()
    wait_until(lambda: ready.exists() or not process.alive(), 60, "broker")
    return process


def _replayed_features(transactions: list[dict[str, Any]]) -> dict[str, list[float]]:
    """Features computed offline from the full history: what exact table recovery must give."""
    states: dict[str, Any] = {}
    expected = {}
    for tx in transactions:
        state = states.get(tx["card_id"])
        expected[tx["transaction_id"]] = features_for(tx, state)
        states[tx["card_id"]] = apply_transaction(tx, state)
    return expected


@pytest.mark.parametrize("wipe", [False, True], ids=["data-dir-kept", "data-dir-wiped"])
def test_table_recovery_is_exact(stack: Stack, wipe: bool) -> None:
    """Stop the scorer, optionally wipe its RocksDB, restart: the card states continue exactly."""
    transactions = list(generate_transactions(2000, seed=31))
    scorer = stack.start_worker("scorer")
    stack.produce_transactions(transactions[:1000])
    verdicts = stack.reader("verdicts")
    verdicts.read_until(lambda m: len(m) >= 1000, 120, "first 1,000 verdicts")
    scorer.stop()
    if wipe:
        import shutil

        shutil.rmtree(stack.root / "data" / "scorer")
    stack.start_worker("scorer")
    # Send the rest once the scorer serves again: transactions arriving *during* a recovery hit a
    # faust-streaming race (docs/limits.md) that this test is not about.
    probe = {"transaction_id": "probe-recovery", "card_id": "card-probe"}
    probe = {**transactions[0], **probe}
    stack.produce_transactions([probe])
    verdicts.read_until(lambda m: any(x.key() == b"probe-recovery" for x in m), 120, "the restarted scorer")
    stack.produce_transactions(transactions[1000:])
    verdicts.read_until(lambda m: len(m) >= 2001, 120, "all 2,000 verdicts")
    expected = _replayed_features(transactions)
    for verdict in verdicts.values():
        if verdict["transaction_id"] == "probe-recovery":
            continue
        got = list(verdict["features"].values())
        assert got == pytest.approx(expected[verdict["transaction_id"]], rel=1e-12, abs=1e-12), verdict[
            "transaction_id"
        ]


def _group_members(stack: Stack) -> list[Any]:
    admin = AdminClient({"bootstrap.servers": stack.bootstrap})
    description = admin.describe_consumer_groups([stack.app_id])[stack.app_id].result(timeout=10)
    return list(description.members)


def _assigned(member: Any, topic: str = "transactions") -> set[int]:
    partitions = member.assignment.topic_partitions if member.assignment else []
    return {tp.partition for tp in partitions if tp.topic == topic}


def _start_two_scorers(stack: Stack) -> tuple[Process, Process]:
    first = stack.start_worker("scorer")
    second = stack.start_worker("scorer", FRAUDLENS_DATA_DIR=str(stack.root / "data-second"))

    def shared() -> bool:
        members = _group_members(stack)
        return len(members) == 2 and all(_assigned(m) for m in members)

    wait_until(shared, 90, "two scorers sharing the partitions")
    return first, second


def _answered_from_every_partition(stack: Stack, verdicts: Any, inputs: Any, txids: set[str]) -> bool:
    answered = {m.key().decode() for m in verdicts.poll(0.5)} & txids
    partition_of = {orjson.loads(m.value())["transaction_id"]: m.partition() for m in inputs.poll(0.1)}
    return len({partition_of[t] for t in answered if t in partition_of}) == stack.topic_partitions(
        "transactions"
    )


def test_two_workers_share_and_one_takes_over(stack: Stack) -> None:
    """Both scorers own partitions; SIGKILL one; the survivor scores every partition (probes sent
    after the kill), and then every new transaction."""
    first, second = _start_two_scorers(stack)
    verdicts, inputs = stack.reader("verdicts"), stack.reader("transactions")
    second.kill()
    killed_at = time.monotonic()
    probes = iter(generate_transactions(5000, seed=40))
    sent: set[str] = set()

    def every_partition_answers() -> bool:
        batch = [next(probes) for _ in range(30)]
        stack.produce_transactions(batch)
        sent.update(tx["transaction_id"] for tx in batch)
        return _answered_from_every_partition(stack, verdicts, inputs, sent)

    # The survivor takes over once the shim evicts the dead member (its session timeout, 10 s):
    # a generous bound, the time itself is printed (speed is the benchmarks' claim).
    wait_until(every_partition_answers, 120, "verdicts from every partition")
    print(f"\ntakeover after the SIGKILL: {time.monotonic() - killed_at:.1f} s")
    transactions = list(generate_transactions(300, seed=41))
    stack.produce_transactions(transactions)
    wanted = {tx["transaction_id"] for tx in transactions}
    verdicts.read_until(lambda m: wanted <= {x.key().decode() for x in m}, 60, "every verdict")
    assert first.alive()


def test_takeover_under_load_loses_nothing(stack: Stack) -> None:
    """Transactions arriving *during* a takeover all get their verdict. When the scorer was a
    Faust agent, faust-streaming 0.15.3 lost ~20 of them here without the offset guard
    (app/explainer/faust_patches.py, the offset guard)."""
    first, second = _start_two_scorers(stack)
    load = SteadyProducer(stack, rate=100, seed=41)
    load.start()
    verdicts = stack.reader("verdicts")
    verdicts.read_until(lambda m: len(m) >= 100, 60, "verdicts from both scorers")
    second.kill()
    killed_at = time.monotonic()
    wait_until(lambda: time.monotonic() - killed_at > 20, 30, "the takeover window")
    load.finish_and_expect_verdicts(stack, verdicts)
    for txid, values in _verdict_values(verdicts.messages).items():
        assert len(values) == 1, f"duplicates of {txid} differ"
    assert first.alive()


def _verdict_values(messages: list[Any]) -> dict[str, set[bytes]]:
    values: dict[str, set[bytes]] = {}
    for message in messages:
        values.setdefault(message.key().decode(), set()).add(message.value())
    return values


def test_broker_shares_our_session_but_not_our_process_group(stack: Stack) -> None:
    """noida-db in its own session would be its own scheduler autogroup on Linux, where the
    explainers' nice does not yield to it (verdict p50 26-46x slower under explainer load,
    docs/performance.md); in its own process group a terminal's Ctrl-C still reaches only us."""
    noida = stack.noida()
    broker = noida.ppid()  # `fraudlens broker`, which started it
    assert os.getsid(noida.pid) == os.getsid(broker) == os.getsid(0)
    assert os.getpgid(noida.pid) == noida.pid != os.getpgid(broker)


def _removed_from_inside(stack: Stack, topic: str) -> int:
    """Offsets missing between the first and last record of each partition, read to its end:
    records compaction removed (time retention only moves the start)."""
    reader = TopicReader(stack.bootstrap, topic)
    try:
        offsets: dict[int, list[int]] = defaultdict(list)
        for message in reader.read_to_end():
            offsets[message.partition()].append(message.offset())
    finally:
        reader.close()
    return sum(max(o) - min(o) + 1 - len(o) for o in offsets.values())


def test_only_compact_only_changelogs_are_compacted(stack: Stack) -> None:
    """``card_activity``'s changelog (compact) gets compacted, so it stays bounded; the
    ``predictions`` changelog (compact,delete, keys never repeat) is left to time retention: its
    compaction removed nothing and paused the verdict path 300-540 ms every 30 s (DESIGN-NOTES).
    A key written twice to the predictions changelog shows it: compacted, the first copy would go."""
    stack.start_worker("scorer")
    cards, predictions = (f"{stack.app_id}-{name}-changelog" for name in ("card_activity", "predictions"))
    traffic = SteadyProducer(stack, rate=100, seed=17)  # 2,500 cards: many written more than once
    traffic.start()
    try:
        stack.reader("verdicts").read_until(lambda m: len(m) >= 1, 90, "a verdict (the changelogs exist)")
        stack.produce([(b"probe", b"1"), (b"probe", b"2")], topic=predictions)  # one key: one partition
        removed: list[int] = []

        def compacted() -> int:
            removed.append(_removed_from_inside(stack, cards))
            return removed[-1]

        try:
            wait_until(compacted, 120, f"noida-db to compact {cards}", 2)
        except AssertionError as exc:
            raise AssertionError(f"{exc}; records removed at the last polls: {removed[-3:]}") from None
    finally:
        traffic.stop.set()
        traffic.join(30)
    reader = stack.reader(predictions)
    probes = [m.value() for m in reader.read_to_end() if m.key() == b"probe"]
    assert probes == [b"1", b"2"], probes  # both copies outlived a compaction of card_activity


IDLE_WINDOW_S = 5.0
IDLE_SCORER_SHARE = 0.05  # of one core
IDLE_BROKER_SHARE = 0.10  # the shim and noida-db together, serving one idle consumer group


def _cpu_shares(groups: dict[str, list[psutil.Process]], window: float) -> dict[str, float]:
    """Share of one core each group of processes used over ``window`` seconds (a measurement)."""
    before = {name: sum(_cpu(p) for p in group) for name, group in groups.items()}
    time.sleep(window)
    return {name: (sum(_cpu(p) for p in group) - before[name]) / window for name, group in groups.items()}


def test_idle_worker_and_broker_use_little_cpu(stack: Stack) -> None:
    """An idle scorer and the broker serving it (long-poll fetches, not a spin) settle below
    their CPU bounds: some window of IDLE_WINDOW_S within two minutes shows it. A busy loop never
    would; a neighbour's load on a shared machine only delays it."""
    scorer = stack.start_worker("scorer")
    stack.produce_transactions(generate_transactions(10, seed=2))
    stack.reader("verdicts").read_until(lambda m: len(m) >= 10, 90, "the scorer to be up")
    broker = psutil.Process(next(p for p in stack.processes if p.name == "broker").pid)
    groups = {"scorer": [psutil.Process(scorer.pid)], "broker": [broker, stack.noida()]}
    seen: list[dict[str, float]] = []

    def quiet() -> bool:
        seen.append(_cpu_shares(groups, IDLE_WINDOW_S))
        return seen[-1]["scorer"] < IDLE_SCORER_SHARE and seen[-1]["broker"] < IDLE_BROKER_SHARE

    try:
        wait_until(quiet, 120, "an idle window of the scorer and the broker", interval=0)
    finally:
        print("\nidle CPU share per window: " + "; ".join(
            f"scorer {w['scorer']:.1%} broker {w['broker']:.1%}" for w in seen))  # fmt: skip


def _cpu(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system + times.children_user + times.children_system)


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_ten_minutes_at_500_per_second_stays_flat(stack: Stack) -> None:
    """Nothing grows with the data: once retention has reached its steady state (after the
    broker's 60 s max retention), broker CPU and verdict latency in the last minute match the
    second minute."""
    from tests.integration.soak import run_soak

    report = run_soak(stack, rate=500, seconds=600, window=60)
    print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
    steady, last = report["windows"][1], report["windows"][-1]
    assert report["lost"] == 0
    assert last["broker_cpu"] <= max(steady["broker_cpu"] * 1.25, steady["broker_cpu"] + 0.05), report
    assert last["latency_p99_ms"] <= max(steady["latency_p99_ms"] * 1.5, 25), report
    assert last["broker_rss_mb"] <= steady["broker_rss_mb"] * 1.5 + 50, report
