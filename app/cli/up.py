"""``fraudlens up``: the whole stack as child processes, supervised, with a live summary line per
second. No child outlives ``up``: each is tied to it by a parent-death signal (app/runtime/lifetime.py),
so even a SIGKILL of ``up`` ends them; SIGINT, SIGTERM and SIGHUP stop them in order."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import statistics
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import orjson

from app.cli.broker import require_installed
from app.kafka import topics
from app.kafka.admin import client_config
from app.runtime import metrics
from app.runtime.lifetime import child_env, stop_process
from app.runtime.restarts import RestartPolicy, RestartTracker, is_failure
from app.settings import Settings, get_settings

log = logging.getLogger(__name__)


class Output:
    """Status lines and notices on stdout. A reader that went away (``up | head``, a ``tee`` that
    took the terminal's Ctrl-C) must not crash ``up`` mid-stop: stdout is then pointed at
    /dev/null, status lines are dropped, and notices go to stderr while it still takes them."""

    def __init__(self) -> None:
        self.broken = False

    def say(self, text: str, notice: bool = True) -> None:
        if not self.broken:
            try:
                print(text, flush=True)
                return
            except (BrokenPipeError, ValueError):
                self._detach_stdout()
        if notice:
            with contextlib.suppress(BrokenPipeError, ValueError):
                print(text, file=sys.stderr, flush=True)

    def _detach_stdout(self) -> None:
        self.broken = True
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())  # what is still buffered, and the exit flush, go nowhere
        os.close(devnull)


@dataclass
class Child:
    """One role: how to start it, its current process, and its restart state."""

    name: str  # its log is <name>.log
    args: list[str]
    env: dict[str, str]
    restarts: RestartTracker
    process: subprocess.Popen[bytes] | None = None
    started: float = 0.0
    restart_at: float | None = None  # monotonic time of a pending restart
    done: bool = False  # finished (exit 0) or given up: not started again


@dataclass
class Stack:
    log_dir: Path
    policy: RestartPolicy
    out: Output
    children: dict[str, Child] = field(default_factory=dict)  # in start order

    def start(self, name: str, args: list[str], **env: str) -> None:
        child = Child(name, args, env, RestartTracker(self.policy))
        self.children[name] = child
        self._spawn(child)

    def _spawn(self, child: Child) -> None:
        """A child in a process group of its own: a terminal's Ctrl-C reaches only ``up``, which
        then stops the children in order (were they in the terminal's group, the broker would
        stop under the workers' shutdown). Spawned from the main thread, without preexec_fn
        (``up`` has threads): the child arms its parent-death signal itself (app/runtime/lifetime.py)."""
        self.log_dir.mkdir(parents=True, exist_ok=True)
        with (self.log_dir / f"{child.name}.log").open("ab") as log_file:
            child.process = subprocess.Popen(
                [sys.executable, "-m", "app.cli.main", *child.args], stdout=log_file, stderr=log_file,
                env=child_env(**child.env), process_group=0,
            )  # fmt: skip
        child.started, child.restart_at = time.monotonic(), None

    def alive(self, name: str) -> bool:
        process = self.children[name].process
        return process is not None and process.poll() is None

    @property
    def restarts(self) -> int:
        return sum(child.restarts.total for child in self.children.values())

    def supervise(self) -> str | None:
        """Restart what failed, when its backoff is over; the reason to give up, if any."""
        now = time.monotonic()
        for child in self.children.values():
            if child.restart_at is not None and now >= child.restart_at:
                self._spawn(child)
            elif self._exited(child) and (reason := self._ended(child, now)):
                return reason
        return None

    @staticmethod
    def _exited(child: Child) -> bool:
        """Ended since we last looked (not already handled, not waiting for its restart)."""
        if child.done or child.restart_at is not None or child.process is None:
            return False
        return child.process.poll() is not None

    def _ended(self, child: Child, now: float) -> str | None:
        code, where = child.process.returncode if child.process else 0, self.log_dir / f"{child.name}.log"
        if not is_failure(code):
            child.done = True
            if child.name != "producer":  # only the producer has a natural end (--count)
                return f"{child.name} ended by itself (exit 0; its log: {where})"
            self.out.say(f"{child.name} finished (exit 0)")
            return None
        delay = child.restarts.failed(now - child.started)
        if delay is None:
            child.done = True
            return (
                f"{child.name} keeps failing (exit code {code}; {self.policy.limit} restarts in a row, "
                f"each failed within {self.policy.window_s:.0f} s; its log: {where}): giving up"
            )
        metrics.UP_RESTARTS.labels(role=child.name).inc()
        child.restart_at = now + delay
        self.out.say(
            f"{child.name} exited with {code} (its log: {where}); "
            f"restart {child.restarts.total} in {delay:.0f} s"
        )
        return None

    def stop(self) -> None:
        """Stop in reverse start order (producer first, broker last). A child that did not stop
        cleanly on its SIGTERM (killed after 30 s, or a non-zero exit) is named. A second
        Ctrl-C is ignored here: it would leave the children not yet stopped running."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        running = [
            child for child in self.children.values() if child.process and child.process.poll() is None
        ]
        if running:
            self.out.say("stopping the stack")
        for child in reversed(running):
            assert child.process is not None
            stop_process(child.process, timeout=30)
            if child.process.returncode != 0:
                self.out.say(
                    f"{child.name} exited with {child.process.returncode} (its log: {child.name}.log)"
                )


class Stopping(Exception):
    """SIGTERM or SIGHUP arrived while the stack was starting."""


def _embedded_port(settings: Settings) -> int | None:
    if "broker" in settings.model_fields_set:
        return None  # FRAUDLENS_BROKER points elsewhere: use that broker
    return int(os.environ.get("FRAUDLENS_BROKER_PORT") or settings.bootstrap_servers.rsplit(":", 1)[1])


def run_up(rate: float | None, explainers: int = 1, policy: RestartPolicy | None = None) -> int:
    settings = get_settings()
    port = _embedded_port(settings)
    if port is not None:  # every child (and the status line) talks to the broker started here
        require_installed()  # else one line and exit 69 before anything starts (app/cli/broker.py)
        os.environ["FRAUDLENS_BROKER"] = f"kafka://127.0.0.1:{port}"
        settings = settings.model_copy(update={"broker": os.environ["FRAUDLENS_BROKER"]})
    # `up` serves the metrics port itself (its restart counter): children all binding it would fail.
    os.environ.pop("FRAUDLENS_METRICS_PORT", None)
    stack = Stack(settings.data_dir / "logs", policy or RestartPolicy(), Output())
    stopping: list[int] = []
    for signum in (signal.SIGTERM, signal.SIGHUP):  # SIGHUP: the terminal or ssh session closed
        signal.signal(signum, lambda number, _frame: stopping.append(number))
    stop_metrics = metrics.serve_in_thread(settings)
    try:
        _start_all(settings, stack, port, rate, explainers, stopping)
        return _status_loop(settings, stack, stopping)
    except (KeyboardInterrupt, Stopping):
        return 0
    finally:
        stack.stop()
        stop_metrics()


def _start_all(
    settings: Settings,
    stack: Stack,
    port: int | None,
    rate: float | None,
    explainers: int,
    stopping: list[int],
) -> None:
    if port is not None:
        ready = settings.data_dir / "broker.ready"
        ready.unlink(missing_ok=True)
        stack.start("broker", ["broker", "--port", str(port), "--ready-file", str(ready)])
        _wait_for(ready.exists, stack, "broker", 60, stopping)
    stack.start("scorer", ["worker", "--role", "scorer"])
    for index in range(explainers):  # own state dirs; one consumer group shares the work
        name = f"explainer-{index + 1}"
        stack.start(name, ["worker", "--role", "explainer"], FRAUDLENS_INSTANCE_ID=name)
    console = _start_relay(settings, stack, stopping)
    if rate:
        stack.start("producer", ["produce", "--rate", str(rate)])
    stack.out.say(f"stack up (logs in {stack.log_dir}); Ctrl-C stops it")
    stack.out.say(f"console: {console}")


def _start_relay(settings: Settings, stack: Stack, stopping: list[int]) -> str:
    """Start the relay; once it answers, the console URL with a fresh token (made before the
    relay starts, so the two never race to create the data dir's secret file)."""
    from app.relay.command import console_url, make_token, relay_answers

    url = console_url(settings, make_token(settings))
    stack.start("relay", ["relay"])
    _wait_for(lambda: relay_answers(settings), stack, "relay", 60, stopping)
    return url


def _wait_for(ready: Any, stack: Stack, name: str, timeout: float, stopping: list[int]) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        if stopping:
            raise Stopping
        if not stack.alive(name) or time.monotonic() > deadline:
            raise SystemExit(f"{name} did not start; see its log: {stack.log_dir / f'{name}.log'}")
        time.sleep(0.1)


def _status_loop(settings: Settings, stack: Stack, stopping: list[int]) -> int:
    """One status line a second, and the children supervised between them. Returns 1 when a
    child is given up (or a role other than the producer ends by itself): the stack stops."""
    from confluent_kafka import Consumer

    consumer = Consumer(client_config(settings, **{
        "group.id": f"{settings.app_id}-up-status", "auto.offset.reset": "latest",
        "enable.auto.commit": False,
    }))  # fmt: skip
    consumer.subscribe([topics.VERDICTS, topics.TRANSACTIONS_DLQ, topics.EXPLANATION_UPDATES])
    totals: Counter[str] = Counter()
    try:
        while not stopping:
            reason = stack.supervise()
            if reason is not None:
                stack.out.say(f"{reason}; stopping the stack")
                return 1
            stack.out.say(f"{_one_second(consumer, totals)} | restarts {stack.restarts}", notice=False)
    finally:
        consumer.close()
    return 0


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
