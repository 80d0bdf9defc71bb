"""A paced load against a running stack, measured per window (used by the conformance soak)."""

from __future__ import annotations

import statistics
import threading
import time
from typing import Any

import psutil
from confluent_kafka import Consumer, TopicPartition

from app.model.generator import generate_transactions
from tests.integration.harness import Stack


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


class _Load:
    """Paced producer thread + verdict consumer thread; latency = consumed - produced."""

    def __init__(self, stack: Stack, rate: float, seconds: float) -> None:
        self.stack, self.rate, self.seconds = stack, rate, seconds
        self.sent_at: dict[bytes, float] = {}
        self.latencies: list[tuple[float, float]] = []  # (consumed at, latency ms)
        self.received: set[bytes] = set()
        self.done_producing = threading.Event()
        self.stop = threading.Event()

    def produce(self) -> None:
        import orjson

        producer = self.stack.producer()
        start = time.monotonic()
        for i, tx in enumerate(generate_transactions(int(self.rate * self.seconds), seed=77)):
            delay = start + i / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)
            txid = tx["transaction_id"].encode()
            self.sent_at[txid] = time.time()
            producer.produce("transactions", key=tx["card_id"].encode(), value=orjson.dumps(tx))
            producer.poll(0)
        producer.flush(30)
        self.done_producing.set()

    def consume(self) -> None:
        consumer = Consumer(
            {
                "bootstrap.servers": self.stack.bootstrap,
                "group.id": "soak",
                "fetch.wait.max.ms": 100,
                "enable.auto.commit": False,
            }
        )
        partitions = len(consumer.list_topics("verdicts", timeout=10).topics["verdicts"].partitions)
        consumer.assign([TopicPartition("verdicts", p, 0) for p in range(partitions)])
        while not self.stop.is_set():
            first = consumer.poll(0.1)  # returns at the first message (consume(n, t) waits for n or t)
            if first is None:
                continue
            now = time.time()
            for message in [first, *consumer.consume(1000, timeout=0)]:
                if message.error() is not None:
                    continue
                key = message.key()
                if key in self.sent_at and key not in self.received:
                    self.received.add(key)
                    self.latencies.append((now, (now - self.sent_at[key]) * 1000))
        consumer.close()


def run_soak(stack: Stack, rate: float, seconds: float, window: float) -> dict[str, Any]:
    scorer = stack.start_worker("scorer")
    load = _Load(stack, rate, seconds)
    threads = [threading.Thread(target=load.produce), threading.Thread(target=load.consume)]
    brokers = [psutil.Process(p.pid) for p in stack.processes if p.name == "broker"]
    watched = brokers + [c for b in brokers for c in b.children(recursive=True)]
    worker = psutil.Process(scorer.pid)
    for thread in threads:
        thread.start()
    windows = []
    start = time.time()
    while not load.done_producing.is_set():
        cpu_before = sum(_cpu(p) for p in watched), _cpu(worker)
        load.done_producing.wait(window)
        cpu_after = sum(_cpu(p) for p in watched), _cpu(worker)
        now = time.time()
        recent = [lat for at, lat in load.latencies if at >= now - window]
        windows.append({
            "t": round(now - start), "broker_cpu": round((cpu_after[0] - cpu_before[0]) / window, 3),
            "scorer_cpu": round((cpu_after[1] - cpu_before[1]) / window, 3),
            "verdicts": len(recent),
            "latency_p50_ms": round(statistics.median(recent), 2) if recent else None,
            "latency_p99_ms": round(_percentile(recent, 0.99), 2) if recent else None,
            "broker_rss_mb": round(sum(p.memory_info().rss for p in watched) / 2**20),
        })  # fmt: skip
        print("soak window", windows[-1], flush=True)
    deadline = time.monotonic() + 60
    while len(load.received) < len(load.sent_at) and time.monotonic() < deadline:
        time.sleep(0.2)
    load.stop.set()
    for thread in threads:
        thread.join(30)
    return {
        "rate": rate,
        "seconds": seconds,
        "sent": len(load.sent_at),
        "lost": len(load.sent_at) - len(load.received),
        "windows": windows,
    }


def _cpu(process: psutil.Process) -> float:
    try:
        times = process.cpu_times()
    except psutil.NoSuchProcess:
        return 0.0
    return float(times.user + times.system)
