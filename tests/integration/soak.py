"""Soak runs. ``run_soak``: a paced load against the broker and a scorer, measured per window (the
10-minute conformance test). ``main`` (`make soak`, `python -m tests.integration.soak`): the whole
stack (scorer, explainers, relay and a console) at a steady rate, sampled over time; the verdict
and the plots come from ``soak_report``."""

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


# -- the full-stack soak (`make soak`): scorer + explainer(s) + relay + one console ----------------


class _Console(threading.Thread):
    """One console on the relay for the whole run: subscribed to everything, counting frames
    (reconnecting, and counting it, if the relay drops it)."""

    def __init__(self, url: str) -> None:
        super().__init__(daemon=True)
        self.url = url
        self.frames = self.reconnects = 0
        self.stop = threading.Event()

    def run(self) -> None:
        from websockets.exceptions import ConnectionClosed
        from websockets.sync.client import connect

        while not self.stop.is_set():
            try:
                with connect(self.url, max_size=None) as ws:
                    ws.send('{"type":"subscribe"}')
                    while not self.stop.is_set():
                        try:
                            ws.recv(timeout=1)
                        except TimeoutError:
                            continue
                        self.frames += 1
            except (ConnectionClosed, OSError):
                self.reconnects += 1
                self.stop.wait(1)  # back-off before reconnecting, not a synchronisation


def _role_processes(stack: Stack) -> dict[str, psutil.Process]:
    names = [p.name for p in stack.processes]
    return {
        (p.name if names.count(p.name) == 1 else f"{p.name}-{i}"): psutil.Process(p.pid)
        for i, p in enumerate(stack.processes)
        if p.alive()
    }


def _tree_rss_mb(process: psutil.Process) -> float | None:
    try:
        tree = [process, *process.children(recursive=True)]
        return round(sum(p.memory_info().rss for p in tree) / 2**20, 1)
    except psutil.NoSuchProcess:
        return None


def _sample(
    t: float, roles: dict[str, psutil.Process], monitor: Any, load: _Load, window: float, console: _Console
) -> dict[str, Any]:
    try:
        lag = monitor.snapshot()
    except Exception as exc:  # a slow broker answer: record the gap in the data, keep soaking
        lag = {"queue_depth": {}, "backlog": None, "gap_ms": {}, "error": str(exc)}
    now = time.time()
    recent = [lat for at, lat in load.latencies if at >= now - window]
    rss = {role: _tree_rss_mb(p) for role, p in roles.items()}
    gaps = lag["gap_ms"]
    return {
        "t": round(t, 1),
        "rss_mb": {role: mb for role, mb in rss.items() if mb is not None},
        "queue_depth": lag["queue_depth"],
        "backlog": lag["backlog"],
        "gap_p50_ms": {p: g.get("p50") for p, g in gaps.items()},
        "gap_p95_ms": {p: g.get("p95") for p, g in gaps.items()},
        "verdicts": len(recent),
        "latency_p50_ms": round(statistics.median(recent), 1) if recent else None,
        "latency_p99_ms": round(_percentile(recent, 0.99), 1) if recent else None,
        "console_frames": console.frames,
        "console_reconnects": console.reconnects,
        **({"lag_error": lag["error"]} if "error" in lag else {}),
    }


def run_full_soak(
    stack: Stack, relay_ws: str, rate: float, minutes: float, sample_s: float
) -> dict[str, Any]:
    """Load the running stack at ``rate`` for ``minutes``, sampling every ``sample_s``."""
    from app.ops.lag_monitor import LagMonitor
    from app.settings import Settings
    from tests.integration import soak_report

    load = _Load(stack, rate, minutes * 60)
    console = _Console(relay_ws)
    settings = Settings(broker=f"kafka://{stack.bootstrap}", app_id=stack.app_id)
    monitor = LagMonitor(settings, window_s=max(30.0, 3 * sample_s), target_s=60)
    threads = [threading.Thread(target=load.produce), threading.Thread(target=load.consume), console]
    roles = _role_processes(stack)
    start = time.time()
    for thread in threads:
        thread.start()
    samples = []
    try:
        while not load.done_producing.wait(sample_s):  # the sampling period, not a synchronisation
            samples.append(_sample(time.time() - start, roles, monitor, load, sample_s, console))
            print("soak sample", samples[-1], flush=True)
        deadline = time.monotonic() + 60
        while len(load.received) < len(load.sent_at) and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        load.stop.set()
        console.stop.set()
        for thread in threads:
            thread.join(30)
        monitor.close()
    lost = len(load.sent_at) - len(load.received)
    results = soak_report.checks(samples, lost)
    return {
        "rate": rate,
        "minutes": minutes,
        "sample_s": sample_s,
        "sent": len(load.sent_at),
        "lost": lost,
        "console_frames": console.frames,
        "console_reconnects": console.reconnects,
        "passed": all(c["ok"] for c in results),
        "checks": results,
        "criterion": (soak_report.__doc__ or "").strip(),
        "samples": samples,
    }


def main(argv: list[str] | None = None) -> int:
    """``make soak``: the real stack at a steady rate; JSON + PNG report; exit 1 if anything grows."""
    import argparse
    import os
    import sys
    import tempfile
    from datetime import UTC, datetime
    from pathlib import Path

    import orjson

    from bench.common import git_commit
    from tests.integration import soak_report
    from tests.integration.harness import start_relay

    parser = argparse.ArgumentParser(prog="python -m tests.integration.soak", description=main.__doc__)
    positive = _positive_float
    # string defaults go through ``type`` too, so a bad SOAK_MINUTES is reported like a bad option
    parser.add_argument("--minutes", type=positive, default=os.environ.get("SOAK_MINUTES", "30"))
    parser.add_argument("--rate", type=positive, default=os.environ.get("SOAK_RATE", "300"))
    parser.add_argument("--sample-s", type=positive, default=None, help="sampling period [run/180, ≥ 5 s]")
    parser.add_argument("--explainers", type=int, choices=range(1, 9), default=1, metavar="1..8")
    parser.add_argument("--low-sample-rate", type=_share, default="1.0", help="explainers' low sampling")
    parser.add_argument("--models", type=Path, default=Path("models"))
    parser.add_argument(
        "--out", type=Path, default=Path("bench/results-soak"), help="writes OUT.json and OUT.png"
    )
    args = parser.parse_args(argv)
    sample_s = args.sample_s or max(5.0, args.minutes * 60 / 180)
    explain_env = {"FRAUDLENS_EXPLAIN_LOW_SAMPLE_RATE": str(args.low_sample_rate)}
    stack = Stack(root=Path(tempfile.mkdtemp(prefix="fraudlens-soak-")), models_dir=args.models.resolve())
    try:
        stack.start_broker()
        stack.start_worker("scorer")
        for _ in range(args.explainers):
            stack.start_worker("explainer", **explain_env)
        relay = start_relay(stack, **explain_env)
        url = f"{relay.ws}?token={relay.token(ttl=args.minutes * 60 + 3600)}"
        report = run_full_soak(stack, url, args.rate, args.minutes, sample_s)
    finally:
        stack.stop_all()
    report |= {
        "explainers": args.explainers, "low_sample_rate": args.low_sample_rate,
        "command": "python -m tests.integration.soak " + " ".join(argv if argv is not None else sys.argv[1:]),
        "date": datetime.now(UTC).isoformat(timespec="seconds"), "git_commit": git_commit(),
    }  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    json_path, png_path = args.out.with_suffix(".json"), args.out.with_suffix(".png")
    json_path.write_bytes(orjson.dumps(report, option=orjson.OPT_INDENT_2))
    soak_report.plot(report, png_path)
    for check in report["checks"]:
        mark = "ok  " if check["ok"] else "FAIL"
        print(f"{mark} {check['series']:<28} growth {check['growth']!s:>8} (limit {check['limit']})")
    print(f"sent {report['sent']}, lost {report['lost']}; {'PASSED' if report['passed'] else 'FAILED'}; "
          f"report {json_path}, plots {png_path}")  # fmt: skip
    return 0 if report["passed"] else 1


def _positive_float(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value > 0 or value != value or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number: {text!r}")
    return value


def _share(text: str) -> float:
    import argparse

    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1: {text!r}")
    return value


if __name__ == "__main__":
    raise SystemExit(main())
