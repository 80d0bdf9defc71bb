"""``fraudlens up``: the whole stack as child processes, with a live summary line per second."""

from __future__ import annotations

import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from app import topics
from app.admin import client_config
from app.broker.embedded import stop_process
from app.settings import Settings, get_settings

Children = dict[str, subprocess.Popen[bytes]]  # by name (its log is <name>.log), in start order


def _spawn(children: Children, args: list[str], log_dir: Path, name: str, **env: str) -> None:
    """A child in a process group of its own: a terminal's Ctrl-C reaches only ``up``, which then
    stops the children in order. Were they in the terminal's group, the broker would stop at the
    same moment as the workers, and their shutdown (commit, leave the group) would wait on a
    broker that is gone until ``_stop`` killed them."""
    log_dir.mkdir(parents=True, exist_ok=True)
    with (log_dir / f"{name}.log").open("ab") as log:
        children[name] = subprocess.Popen(
            [sys.executable, "-m", "app.cli.main", *args], stdout=log, stderr=log,
            env={**os.environ, **env}, process_group=0,
        )  # fmt: skip


def _stop(children: Children) -> None:
    """Stop in reverse start order (producer first, broker last); no orphans. A child that did
    not stop cleanly on its SIGTERM (killed after 30 s, or a non-zero exit) is named. A second
    Ctrl-C is ignored here: it would leave the children not yet stopped running."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    if any(child.poll() is None for child in children.values()):
        print("stopping the stack", flush=True)
    for name, child in reversed(children.items()):
        stop_process(child, timeout=30)
        if child.returncode != 0:
            print(f"{name} exited with {child.returncode} (its log: {name}.log)", flush=True)


def _embedded_port(settings: Settings) -> int | None:
    if "broker" in settings.model_fields_set:
        return None  # FRAUDLENS_BROKER points elsewhere: use that broker
    return int(os.environ.get("FRAUDLENS_BROKER_PORT") or settings.bootstrap_servers.rsplit(":", 1)[1])


def run_up(rate: float | None, explainers: int = 1) -> int:
    settings = get_settings()
    port = _embedded_port(settings)
    if port is not None:  # every child (and the status line) talks to the broker started here
        os.environ["FRAUDLENS_BROKER"] = f"kafka://127.0.0.1:{port}"
        settings = settings.model_copy(update={"broker": os.environ["FRAUDLENS_BROKER"]})
    log_dir = settings.data_dir / "logs"
    children: Children = {}
    stopping: list[int] = []
    signal.signal(signal.SIGTERM, lambda signum, _frame: stopping.append(signum))
    try:
        if port is not None:
            ready = settings.data_dir / "broker.ready"
            ready.unlink(missing_ok=True)
            _spawn(children, ["broker", "--port", str(port), "--ready-file", str(ready)], log_dir, "broker")
            _wait_for(lambda: ready.exists(), children, 60, "broker")
        _spawn(children, ["worker", "--role", "scorer"], log_dir, "scorer")
        for index in range(explainers):  # own state dirs; one consumer group shares the work
            name = f"explainer-{index + 1}"
            _spawn(children, ["worker", "--role", "explainer"], log_dir, name, FRAUDLENS_INSTANCE_ID=name)
        console = _start_relay(settings, children, log_dir)
        if rate:
            _spawn(children, ["produce", "--rate", str(rate)], log_dir, "producer")
        print(f"stack up (logs in {log_dir}); Ctrl-C stops it", flush=True)
        print(f"console: {console}", flush=True)
        _status_loop(settings, children, stopping)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        _stop(children)


def _start_relay(settings: Settings, children: Children, log_dir: Path) -> str:
    """Start the relay; once it answers, the console URL with a fresh token (made before the
    relay starts, so the two never race to create the data dir's secret file)."""
    from app.relay.cli import console_url, make_token, relay_answers

    url = console_url(settings, make_token(settings))
    _spawn(children, ["relay"], log_dir, "relay")
    _wait_for(lambda: relay_answers(settings), children, 60, "relay")
    return url


def _wait_for(ready: Any, children: Children, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if any(child.poll() is not None for child in children.values()) or time.monotonic() > deadline:
            raise SystemExit(f"{what} did not start; see its log")
        time.sleep(0.1)


def _status_loop(settings: Settings, children: Children, stopping: list[int]) -> None:
    from confluent_kafka import Consumer

    consumer = Consumer(client_config(settings, **{
        "group.id": f"{settings.app_id}-up-status", "auto.offset.reset": "latest",
        "enable.auto.commit": False,
    }))  # fmt: skip
    consumer.subscribe([topics.VERDICTS, topics.TRANSACTIONS_DLQ, topics.EXPLANATION_UPDATES])
    totals: Counter[str] = Counter()
    try:
        while not stopping:
            if any(child.poll() is not None for child in children.values()):
                print("a child process exited; stopping the stack", flush=True)
                return
            print(_one_second(consumer, totals), flush=True)
    finally:
        consumer.close()


def _one_second(consumer: Any, totals: Counter[str]) -> str:
    end = time.monotonic() + 1.0
    latencies: list[float] = []
    gaps: list[float] = []
    count = explained = 0
    while (left := end - time.monotonic()) > 0:
        for message in consumer.consume(500, timeout=left):
            if message.error() is not None:
                continue
            record = orjson.loads(message.value())
            if message.topic() == topics.TRANSACTIONS_DLQ:
                totals["dlq"] += 1
                continue
            if message.topic() == topics.EXPLANATION_UPDATES:
                if record.get("status") == "complete":
                    explained += 1
                    totals["explained"] += 1
                    gaps.append(float(record.get("timings", {}).get("verdict_to_complete_ms", "nan")))
                continue
            count += 1
            totals[record["decision"]] += 1
            latencies.append(_latency_ms(record))
    p50 = statistics.median(latencies) if latencies else float("nan")
    gap = statistics.median(gaps) if gaps else float("nan")
    return (
        f"verdicts/s {count:5d} | approve {totals['approve']} review {totals['review']} "
        f"deny {totals['deny']} | dlq {totals['dlq']} | event→verdict p50 {p50:.1f} ms | "
        f"explained/s {explained:4d} (total {totals['explained']}) gap p50 {gap:.0f} ms"
    )


def _latency_ms(verdict: dict[str, Any]) -> float:
    scored = datetime.fromisoformat(verdict["scored_at"])
    event = datetime.fromisoformat(verdict["event_time"])
    return (scored - event).total_seconds() * 1000
