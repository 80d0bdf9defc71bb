"""``make bench-relay``: delivery latency from Kafka to websocket clients through the relay.

A broker and one relay (real processes); verdicts are produced straight to ``verdicts`` at a
paced rate with ``scored_at`` = the moment of sending, so latency = client receive time minus
that (same clock): producer → broker → relay consumer → fan-out → websocket → client. N clients
subscribe to everything from one client process. Writes bench/results-relay.json.

    python -m bench.relay [--clients 200] [--rate 500] [--seconds 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import orjson
from websockets.asyncio.client import connect

from app.records.contracts import SCHEMA_DIR, format_utc
from bench.common import cpu_seconds, target
from tests.integration.harness import RelayProcess, Stack, start_relay

OUT = Path(__file__).resolve().parent


def _produce(bootstrap: str, rate: float, seconds: float) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "partitioner": "murmur2_random"})
    verdict = json.loads((SCHEMA_DIR / "examples" / "verdict.valid.json").read_text())
    start, sent = time.monotonic(), 0
    while (elapsed := time.monotonic() - start) < seconds:
        if sent > elapsed * rate:
            time.sleep(min(0.001, sent / rate - elapsed))
            continue
        txid = f"bench-{sent}"
        value = {**verdict, "transaction_id": txid, "scored_at": format_utc(datetime.now(UTC))}
        producer.produce("verdicts", key=txid.encode(), value=orjson.dumps(value))
        producer.poll(0)
        sent += 1
    producer.flush(30)


async def _client(relay: RelayProcess, token: str, latencies: list[float], closed: list[str]) -> None:
    async with connect(f"{relay.ws}?token={token}", max_size=2**20) as ws:
        await ws.send('{"type":"subscribe"}')
        try:
            async for frame in ws:
                received = time.time()
                message = orjson.loads(frame)
                if message["type"] == "verdict":
                    scored = datetime.fromisoformat(message["verdict"]["scored_at"]).timestamp()
                    latencies.append((received - scored) * 1000)
                elif message["type"] == "lagging":
                    closed.append("lagging")
        except Exception as exc:  # a dropped client is a result, not a crash of the bench
            closed.append(type(exc).__name__)


async def _run_clients(
    relay: RelayProcess, clients: int, done: asyncio.Event, latencies: list[float]
) -> tuple[list[float], list[str]]:
    closed: list[str] = []
    token = relay.token(3600)
    tasks = [asyncio.create_task(_client(relay, token, latencies, closed)) for _ in range(clients)]
    await done.wait()
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return latencies, closed


def measure(stack: Stack, relay: RelayProcess, clients: int, rate: float, seconds: float) -> dict[str, Any]:
    async def run() -> tuple[list[float], list[str]]:
        done, latencies = asyncio.Event(), list[float]()
        runner = asyncio.create_task(_run_clients(relay, clients, done, latencies))
        await asyncio.to_thread(lambda: _wait_connected(relay, clients))
        cpu[0], cpu[1], began = cpu_seconds([relay.process.pid]), time.process_time(), time.monotonic()
        producer = multiprocessing.Process(target=_produce, args=(stack.bootstrap, rate, seconds))
        producer.start()
        await asyncio.to_thread(producer.join)
        before = -1
        while len(latencies) != before:  # until the clients have gone quiet for 2 s
            before = len(latencies)
            await asyncio.sleep(2.0)
        cpu[0] = cpu_seconds([relay.process.pid]) - cpu[0]
        cpu[1] = (time.process_time() - cpu[1]) / (time.monotonic() - began)  # this process: the clients
        done.set()
        return await runner

    cpu = [0.0, 0.0]
    latencies, closed = asyncio.run(run())
    values = np.asarray(latencies or [float("nan")])
    expected = int(rate * seconds) * clients
    return {
        "clients": clients, "rate": rate, "seconds": seconds,
        "delivered": len(latencies), "expected": expected,
        "dropped_clients": len(closed),
        # the relay's own CPU per delivered frame: its cost, whatever the load client can take
        "relay_cpu_s": round(cpu[0], 2),
        "relay_cpu_us_per_frame": round(cpu[0] * 1e6 / max(len(latencies), 1), 1),
        "client_cpu_cores": round(cpu[1], 2),  # 1.0: the load client itself is the bottleneck
        **{f"p{q}_ms": round(float(np.percentile(values, q)), 1) for q in (50, 90, 99)},
        "max_ms": round(float(values.max()), 1),
    }  # fmt: skip


def _wait_connected(relay: RelayProcess, clients: int) -> None:
    deadline = time.monotonic() + 60
    while relay.stats()["clients"] < clients:
        if time.monotonic() > deadline:
            raise SystemExit("clients did not connect")
        time.sleep(0.2)


def measure_all(clients: list[int], rates: list[float], seconds: float) -> list[dict[str, Any]]:
    """One broker and relay; every (clients, rate) pair measured in turn, each printed."""
    results = []
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as root:
        stack = Stack(root=Path(root), models_dir=Path(root) / "models")
        stack.start_broker()
        try:
            relay = start_relay(stack, FRAUDLENS_RELAY_CLIENT_QUEUE_MAX="5000")
            for n in clients:
                for rate in rates:
                    results.append(measure(stack, relay, n, rate, seconds))
                    print(json.dumps(results[-1]), flush=True)
        finally:
            stack.stop_all()
    return results


def run(quick: bool, models: Path, out: Path) -> dict[str, Any]:
    """For ``python -m bench``: 200 clients at 100 and 500 verdicts/s (quick: 20 clients, 100/s)."""
    clients, rates, seconds = ([20], [100.0], 3.0) if quick else ([200], [100.0, 500.0], 15.0)
    results = measure_all(clients, rates, seconds)
    targets = {
        f"relay_p99_{r['clients']}_clients_at_{r['rate']:.0f}": target(
            f"delivery p99 ≤ 50 ms, {r['clients']} clients, {r['rate']:.0f} verdicts/s", r["p99_ms"], 50
        )
        for r in results
        if r["clients"] >= 200 or quick
    }
    return {"summary": {"runs": results}, "targets": targets, "raw": results, "plots": []}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, nargs="+", default=[20, 200])
    parser.add_argument("--rate", type=float, nargs="+", default=[100, 500])
    parser.add_argument("--seconds", type=float, default=20)
    args = parser.parse_args()
    results = measure_all(args.clients, args.rate, args.seconds)
    (OUT / "results-relay.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
