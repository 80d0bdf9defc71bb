"""``make bench-scorer``: verdict latency and scorer throughput on the real stack, beside the
broker's own floor, all in one run. Writes bench/results-scorer.json and a latency CDF plot.

    python -m bench.scorer [--quick] [--models DIR]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from confluent_kafka import Consumer, Producer, TopicPartition

from app.model.generator import generate_transactions
from bench.common import cdf_points, target
from tests.integration.harness import Stack, wait_until

OUT = Path(__file__).resolve().parent
PRODUCER = {"linger.ms": 1, "acks": "all"}
CONSUMER = {"fetch.wait.max.ms": 100, "enable.auto.commit": False}


def _percentiles(latencies: list[float]) -> dict[str, float]:
    values = np.asarray(latencies)
    return {f"p{q}": round(float(np.percentile(values, q)), 2) for q in (50, 90, 99, 99.9)} | {
        "max": round(float(values.max()), 2), "n": int(values.size)}  # fmt: skip


class _Consumer(threading.Thread):
    """Reads a topic from its end; records receive times by key."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        super().__init__(daemon=True)
        self.consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{topic}", **CONSUMER})
        partitions = len(self.consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        ends = [self.consumer.get_watermark_offsets(TopicPartition(topic, p))[1] for p in range(partitions)]
        self.consumer.assign([TopicPartition(topic, p, end) for p, end in enumerate(ends)])
        self.received: dict[bytes, float] = {}
        self.stop = threading.Event()

    def run(self) -> None:
        # poll() returns as soon as one message is there; consume(n, timeout) would wait for n
        # messages or the whole timeout and add that wait to every latency.
        while not self.stop.is_set():
            first = self.consumer.poll(0.05)
            if first is None:
                continue
            now = time.time()
            for message in [first, *self.consumer.consume(1000, timeout=0)]:
                key = message.key()
                if message.error() is None and key is not None:
                    self.received.setdefault(key, now)
        self.consumer.close()


def _paced(
    stack: Stack, rate: float, seconds: float, topic: str, seed: int, out_topic: str, warmup_s: float = 1.0
) -> dict[str, Any]:
    """Send at ``rate`` to ``topic``; latency = seen on ``out_topic`` (keyed by txid) - sent.

    The first ``warmup_s`` seconds are sent at the same pace but not counted: a new consumer
    fetches some partitions only after its first fetch round (measured: the first ~0.25 s of a
    window waited up to its fetch.wait.max.ms, 1-2% of a 15 s window at 1,000 tx/s, enough to
    set a p99), and a new producer has no connection yet. That is the measuring clients' start,
    not the path measured.
    """
    consumer = _Consumer(stack.bootstrap, out_topic)
    consumer.start()
    producer = Producer({"bootstrap.servers": stack.bootstrap, **PRODUCER})
    warmup = int(rate * warmup_s)
    sent: dict[bytes, float] = {}
    start = time.monotonic()
    for i, tx in enumerate(generate_transactions(warmup + int(rate * seconds), seed=seed)):
        delay = start + i / rate - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        txid = tx["transaction_id"].encode()
        key = txid if topic == out_topic else tx["card_id"].encode()
        if i >= warmup:
            sent[txid] = time.time()
        producer.produce(topic, key=key, value=orjson.dumps(tx))
        producer.poll(0)
    producer.flush(30)
    wait_until(lambda: len(consumer.received) >= warmup + len(sent), 120, f"{out_topic} for every message")
    consumer.stop.set()
    consumer.join(10)
    latencies = [(consumer.received[k] - t) * 1000 for k, t in sent.items() if k in consumer.received]
    return {
        "rate": rate, "seconds": seconds, "warmup_s": warmup_s,
        "latency_ms": _percentiles(latencies), "samples": latencies,  # in send order, 1/rate apart
        "first_sent_at": next(iter(sent.values()), None),  # epoch seconds of the first sample's send
    }  # fmt: skip


@contextlib.contextmanager
def environment(**values: str) -> Iterator[None]:
    """Environment variables for the processes started inside (restored after)."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def long_retention() -> contextlib.AbstractContextManager[None]:
    """Start the broker inside this: a preloaded backlog must outlive a slow scorer start on a
    loaded machine, and the embedded broker's default retention (60 s) once deleted it (the
    scorer took 75 s to join)."""
    return environment(FRAUDLENS_BROKER_MAX_RETENTION_S="900")


def preload_backlog(stack: Stack, count: int, seed: int) -> _Consumer:
    """``count`` transactions waiting before any scorer runs; a reader of their verdicts."""
    producer = Producer({"bootstrap.servers": stack.bootstrap, "linger.ms": 20, "batch.num.messages": 10000})
    for tx in generate_transactions(count, seed=seed):
        producer.produce("transactions", key=tx["card_id"].encode(), value=orjson.dumps(tx))
        producer.poll(0)
    producer.flush(60)
    consumer = _Consumer(stack.bootstrap, "verdicts")
    consumer.start()
    return consumer


def drain_rate(consumer: _Consumer, count: int) -> dict[str, Any]:
    """First → last verdict of a preloaded backlog of ``count``."""
    wait_until(lambda: consumer.received, 180, "the first verdict")
    first = time.time()
    wait_until(lambda: len(consumer.received) >= count, 600, "every preloaded verdict", interval=0.2)
    consumer.stop.set()
    consumer.join(10)
    seconds = max(consumer.received.values()) - first
    return {"count": count, "seconds": round(seconds, 2), "tx_per_s": round(count / max(seconds, 1e-3), 1)}


def _throughput(stack: Stack, count: int) -> dict[str, Any]:
    """Preload ``count`` transactions with the scorer stopped, then time the drain."""
    consumer = preload_backlog(stack, count, seed=505)
    stack.start_worker(
        "scorer",
        FRAUDLENS_DATA_DIR=str(stack.root / "data-throughput"),
        FRAUDLENS_APP_ID="fraudlens-throughput",
    )
    return drain_rate(consumer, count)


def measure_all(
    quick: bool, models: Path | None, seconds: float | None = None, plan: dict[str, Any] | None = None
) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="fraudlens-bench-") as tmp:
        root = Path(tmp)
        models_dir = models or _train(root)
        stack = Stack(root=root, models_dir=models_dir)
        try:
            with long_retention():  # the drain's preload waits while the paced runs go first
                stack.start_broker()
            return _measure(stack, quick, seconds, plan)
        finally:
            stack.stop_all()


def _measure(
    stack: Stack, quick: bool, window_s: float | None = None, plan: dict[str, Any] | None = None
) -> dict[str, Any]:
    seconds = window_s or (5 if quick else 30)
    rates = (plan or {}).get("rates") or ([200, 1000] if quick else [200, 1000, 2000])
    floor_topic = "bench.floor"
    from app.kafka.admin import ensure_topics
    from app.settings import Settings

    ensure_topics(Settings(broker=f"kafka://{stack.bootstrap}"), (floor_topic,))
    scorer = stack.start_worker("scorer")
    stack.produce_transactions(generate_transactions(20, seed=1))
    stack.reader("verdicts").read_until(lambda m: len(m) >= 20, 120, "the scorer to be up")
    results: dict[str, Any] = {"floor": [], "verdict": []}
    for rate in rates:  # floor and verdict alternate at each rate, in the same run
        results["floor"].append(_paced(stack, rate, seconds, floor_topic, rate, floor_topic))
        results["verdict"].append(_paced(stack, rate, seconds, "transactions", rate + 1, "verdicts"))
    scorer.stop()
    results["throughput"] = _throughput(stack, (plan or {}).get("drain") or (20_000 if quick else 100_000))
    return results


def _train(root: Path) -> Path:
    from app.model.training import train

    train(rows=40_000, seed=7, registry_dir=root / "models", progress=False)
    return root / "models"


def _plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5))
    for kind, style in (("floor", "--"), ("verdict", "-")):
        for run in results[kind]:
            values = np.sort(run["samples"])
            ax.plot(values, np.linspace(0, 1, values.size), style, label=f"{kind} @ {run['rate']:.0f} tx/s")
    ax.set_xscale("log")
    ax.set_xlabel("latency, ms (produce → consumed)")
    ax.set_ylabel("fraction")
    ax.set_title("Verdict latency vs broker floor")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    rows = []
    for floor, verdict in zip(results["floor"], results["verdict"], strict=True):
        rows.append({
            "rate": verdict["rate"], "verdict": verdict["latency_ms"], "floor": floor["latency_ms"],
            "p99_ratio": round(verdict["latency_ms"]["p99"] / floor["latency_ms"]["p99"], 2),
        })  # fmt: skip
    at_1000 = next(r for r in rows if r["rate"] == 1000)
    targets = {
        "verdict_p99_le_25ms_at_1000": target(
            "verdict p99 ≤ 25 ms at 1,000 tx/s", at_1000["verdict"]["p99"], 25
        ),
        "verdict_p99_within_2x_floor_at_1000": target(
            "verdict p99 ≤ 2× broker floor p99 at 1,000 tx/s", at_1000["p99_ratio"], 2
        ),
        "throughput_ge_5000": target(
            "one scorer ≥ 5,000 tx/s sustained",
            results["throughput"]["tx_per_s"],
            5000,
            higher_is_better=True,
        ),
    }
    return {"latency": rows, "throughput": results["throughput"], "targets": targets}


def run(quick: bool, models: Path, out: Path) -> dict[str, Any]:
    """For ``python -m bench``: 15 s windows per rate, 50,000 drained (make bench: ~25 minutes)."""
    plan = {"rates": [1000], "drain": 3000} if quick else {"drain": 50_000}
    results = measure_all(quick, models, 3 if quick else 15, plan)
    summary = summarize(results)
    name = "scorer-quick.png" if quick else "scorer.png"
    _plot(results, out / name)
    for kind in ("floor", "verdict"):
        for paced in results[kind]:
            paced["cdf_ms"] = cdf_points(paced.pop("samples"))
    targets = summary.pop("targets")
    return {"summary": summary, "targets": targets, "raw": results, "plots": [name]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short run (CI); asserts nothing")
    parser.add_argument("--models", type=Path, default=None, help="model registry (default: train one)")
    args = parser.parse_args()
    results = measure_all(args.quick, args.models)
    summary = summarize(results)
    name = "results-scorer-quick" if args.quick else "results-scorer"
    (OUT / f"{name}.json").write_text(json.dumps({"summary": summary, "raw": results}, indent=1))
    _plot(results, OUT / f"{name}.png")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
