"""The embedded broker's floor against the data it holds: does its latency grow with its store?

noida-db rewrites its whole store as one JSON file after changes (DESIGN-NOTES.md), and the
stack's own topics (changelogs, explanation requests and updates) make that store several
times larger when the explainers run. This benchmark isolates that one variable: one broker,
no workers; a filler topic (long retention, never read) is filled to each level in turn, and
at each level the plain produce → consume round trip (``bench.scorer``'s floor, no Faust) is
measured at a paced rate, with noida-db's CPU and store file size beside it. The last levels
add another client's writes during the measurement instead (the explainers' traffic, without
their CPU).

    python -m bench.broker_store [--quick] [--models DIR]
"""

from __future__ import annotations

import multiprocessing
import tempfile
import time
from pathlib import Path
from typing import Any

import orjson
from confluent_kafka import Producer

from app.model.generator import generate_transactions
from bench.scorer import _paced, long_retention
from tests.integration.harness import Stack

FLOOR, FILL = "bench.floor", "bench.fill"


def _store_mb(stack: Stack) -> float:
    store = stack.root / "data" / "broker" / "noida" / "kafka.json"
    return round(store.stat().st_size / 1e6, 1) if store.exists() else 0.0


def _fill(stack: Stack, megabytes: float, seed: int) -> float:
    """Produce about ``megabytes`` of transaction-like records into the filler topic."""
    producer = Producer({"bootstrap.servers": stack.bootstrap, "linger.ms": 20, "batch.num.messages": 10000})
    written = 0
    for tx in generate_transactions(10_000_000, seed=seed):
        if written >= megabytes * 1e6:
            break
        value = orjson.dumps(tx)
        producer.produce(FILL, key=tx["card_id"].encode(), value=value)
        written += len(value) + len(tx["card_id"])
        producer.poll(0)
    producer.flush(600)
    return written / 1e6


def _background(bootstrap: str, rate: float, seconds: float) -> None:
    """Another client's writes (as the explainers' rows and updates are): ``rate`` msg/s of
    ~1.5 KB into the filler topic, paced, for ``seconds``."""
    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 5})
    value = b'{"shap":[' + b",".join(b"%.6f" % (i / 7) for i in range(160)) + b"]}"
    began, sent = time.monotonic(), 0
    while (elapsed := time.monotonic() - began) < seconds:
        while sent < elapsed * rate:
            producer.produce(FILL, key=str(sent).encode(), value=value)
            sent += 1
        producer.poll(0.002)
    producer.flush(60)


def measure(levels: list[tuple[float, float]], rate: float, seconds: float) -> list[dict[str, Any]]:
    """``levels``: (filler MB held, background writes/s during the measurement) in turn."""
    from app.kafka.admin import ensure_topics
    from app.settings import Settings

    rows = []
    with tempfile.TemporaryDirectory(prefix="fraudlens-bench-store-") as tmp:
        stack = Stack(root=Path(tmp), models_dir=Path(tmp) / "models")
        try:
            with long_retention():  # the filler must stay for the whole run
                stack.start_broker()
            ensure_topics(Settings(broker=f"kafka://{stack.bootstrap}"), (FLOOR, FILL))
            noida, held = stack.noida(), 0.0
            for n, (level, background) in enumerate(levels):
                held += _fill(stack, level - held, seed=300 + n) if level > held else 0.0
                time.sleep(2.0)  # let the store's rewrite catch up before measuring (not a sync)
                writer = multiprocessing.Process(
                    target=_background, args=(stack.bootstrap, background, seconds)
                )
                if background:
                    writer.start()
                cpu_before, began = sum(noida.cpu_times()[:2]), time.monotonic()
                floor = _paced(stack, rate, seconds, FLOOR, 700 + n, FLOOR)
                cpu = (sum(noida.cpu_times()[:2]) - cpu_before) / (time.monotonic() - began)
                if background:
                    writer.join(60)
                    held += background * seconds * 1.5e-3
                rows.append({
                    "fill_mb": round(held, 1), "background_msg_per_s": background,
                    "store_file_mb": _store_mb(stack), "rate": rate,
                    "floor_ms": floor["latency_ms"], "noida_cpu_cores": round(cpu, 2),
                    "noida_rss_mb": round(noida.memory_info().rss / 1e6, 1),
                })  # fmt: skip
                print(rows[-1], flush=True)
        finally:
            stack.stop_all()
    return rows


def run(quick: bool, models: Path, out: Path) -> dict[str, Any]:
    if quick:
        levels, rate, seconds = [(0.0, 0.0), (5.0, 200.0)], 500.0, 3.0
    else:
        levels = [(0.0, 0.0), (50.0, 0.0), (150.0, 0.0), (150.0, 1000.0), (150.0, 3000.0), (300.0, 0.0)]
        rate, seconds = 1000.0, 15.0
    rows = measure(levels, rate, seconds)
    keep = ("fill_mb", "background_msg_per_s", "store_file_mb", "noida_cpu_cores")
    levels_out = [
        {**{k: r[k] for k in keep}, "p50_ms": r["floor_ms"]["p50"], "p99_ms": r["floor_ms"]["p99"]}
        for r in rows
    ]
    summary = {"rate": rate, "levels": levels_out}
    return {"summary": summary, "targets": {}, "raw": rows, "plots": []}


if __name__ == "__main__":
    from bench.__main__ import main_one

    main_one("broker_store")
