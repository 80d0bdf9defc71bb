"""Start and stop the real stack for integration tests: processes by their own PID, free ports."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import psutil
from confluent_kafka import Consumer, Producer, TopicPartition

from app.model.generator import generate_transactions
from app.runtime.lifetime import PARENT_PID_ENV
from fraudlens_devbroker.embedded import free_port

REPO = Path(__file__).resolve().parents[2]


def wait_until(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
    """Poll ``condition`` until it returns something truthy; fail with ``what`` on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(interval)


@dataclass
class Process:
    name: str
    popen: subprocess.Popen[bytes]
    log: Path

    @property
    def pid(self) -> int:
        return self.popen.pid

    def alive(self) -> bool:
        return self.popen.poll() is None

    def stop(self, timeout: float = 30) -> None:
        """SIGTERM this process (and, if it lingers, SIGKILL it and its children)."""
        if not self.alive():
            return
        children = _children(self.pid)
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        for child in children:
            if child.is_running():
                child.kill()

    @contextmanager
    def frozen(self) -> Iterator[None]:
        """SIGSTOP for the block: the process holds its connections and does nothing; SIGCONT after."""
        os.kill(self.pid, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(self.pid, signal.SIGCONT)

    def kill(self) -> None:
        children = _children(self.pid)
        if self.alive():
            self.popen.kill()
            self.popen.wait(10)
        for child in children:
            if child.is_running():
                child.kill()

    def tail(self, lines: int = 40) -> str:
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        return "\n".join(text.splitlines()[-lines:])


def _children(pid: int) -> list[psutil.Process]:
    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


@dataclass
class Stack:
    """One isolated fraudlens deployment: its own broker port, data dir and app id."""

    root: Path
    models_dir: Path
    broker_port: int = field(default_factory=free_port)
    app_id: str = "fraudlens"
    processes: list[Process] = field(default_factory=list)
    readers: list[TopicReader] = field(default_factory=list)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.broker_port}"

    def env(self, **extra: str) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            FRAUDLENS_BROKER=f"kafka://{self.bootstrap}",
            FRAUDLENS_DATA_DIR=str(self.root / "data"),
            FRAUDLENS_MODELS_DIR=str(self.models_dir),
            FRAUDLENS_APP_ID=self.app_id,
            PYTHONUNBUFFERED="1",
        )
        env.update(extra)
        return env

    def spawn(self, name: str, args: Iterable[str], own_group: bool = False, **env: str) -> Process:
        """Start ``fraudlens <args>``; ``own_group`` puts it in a process group of its own."""
        log = self.root / "logs" / f"{name}-{len(self.processes)}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        with log.open("wb") as out:
            popen = subprocess.Popen(
                [sys.executable, "-m", "app.cli.main", *args],
                # ends with this test process however it ends (a CI timeout, a Ctrl-C): no orphan
                cwd=REPO, env=self.env(**{PARENT_PID_ENV: str(os.getpid()), **env}), stdout=out,
                stderr=subprocess.STDOUT, process_group=0 if own_group else None,
            )  # fmt: skip
        process = Process(name, popen, log)
        self.processes.append(process)
        return process

    def start_broker(self, data_dir: Path | None = None) -> Process:
        ready = self.root / f"broker-ready-{len(self.processes)}"
        directory = data_dir or self.root / "data" / "broker"
        process = self.spawn(
            "broker",
            [
                "broker",
                "--port",
                str(self.broker_port),
                "--data-dir",
                str(directory),
                "--ready-file",
                str(ready),
            ],
        )
        wait_until(lambda: ready.exists() or not process.alive(), 60, "the broker to answer")
        assert process.alive(), process.tail()
        return process

    def noida(self) -> psutil.Process:
        """The noida-db process under the first ``fraudlens broker`` started."""
        broker = psutil.Process(next(p for p in self.processes if p.name == "broker").pid)
        return next(c for c in broker.children(recursive=True) if "noida" in c.name())

    def start_worker(self, role: str = "scorer", **env: str) -> Process:
        return self.spawn(role, ["worker", "--role", role], **env)

    def stop_all(self) -> None:
        for reader in self.readers:
            reader.close()
        for process in reversed(self.processes):
            process.stop()

    # -- Kafka helpers -------------------------------------------------------------------

    def producer(self) -> Producer:
        return Producer({"bootstrap.servers": self.bootstrap, "linger.ms": 5, "acks": "all"})

    def produce(
        self, messages: Iterable[tuple[bytes | None, bytes | None]], topic: str = "transactions"
    ) -> int:
        producer = self.producer()
        failures: list[Any] = []
        count = 0
        for key, value in messages:
            # (value, reason code) pairs passed here once became (key, value): refuse anything else.
            for part in (key, value):
                assert part is None or isinstance(part, bytes), f"key and value must be bytes: {part!r:.80}"
            producer.produce(
                topic, value=value, key=key, on_delivery=lambda err, _m: failures.append(err) if err else None
            )
            producer.poll(0)
            count += 1
        assert producer.flush(30) == 0, "producer did not flush"
        assert not failures, failures[:3]
        return count

    def produce_transactions(self, transactions: Iterable[dict[str, Any]]) -> int:
        return self.produce((tx["card_id"].encode(), orjson.dumps(tx)) for tx in transactions)

    def reader(self, topic: str) -> TopicReader:
        reader = TopicReader(self.bootstrap, topic)
        self.readers.append(reader)
        return reader

    def topic_partitions(self, topic: str) -> int:
        consumer = Consumer({"bootstrap.servers": self.bootstrap, "group.id": "probe"})
        try:
            metadata = consumer.list_topics(topic, timeout=10)
            return len(metadata.topics[topic].partitions)
        finally:
            consumer.close()


class TopicReader:
    """Reads every partition of a topic from the beginning, without a consumer group."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self.consumer = Consumer({
            "bootstrap.servers": bootstrap, "group.id": f"reader-{topic}",
            "enable.auto.commit": False, "fetch.wait.max.ms": 100, "log_level": 2,
            "auto.offset.reset": "earliest",
        })  # fmt: skip
        self.closed = False
        self.assigned = 0
        self.messages: list[Any] = []

    def _assign(self) -> None:
        metadata = self.consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
        partitions = len(metadata.partitions) if metadata else 0
        if partitions > self.assigned:
            self.consumer.assign([TopicPartition(self.topic, p, 0) for p in range(partitions)])
            self.messages.clear()
            self.assigned = partitions

    def poll(self, seconds: float = 0.2) -> list[Any]:
        if not self.assigned:
            self._assign()
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            batch = self.consumer.consume(1000, timeout=0.05)
            self.messages.extend(m for m in batch if m.error() is None)
        return self.messages

    def read_until(self, condition: Callable[[list[Any]], bool], timeout: float, what: str) -> list[Any]:
        wait_until(lambda: condition(self.poll()), timeout, what, interval=0)
        return self.messages

    def read_to_end(self, timeout: float = 60) -> list[Any]:
        """Everything written to the topic before this call: reads until every partition's
        position reaches the end offset the broker reported at the start (a timed poll can
        come back short on a loaded machine)."""
        if not self.assigned:
            self._assign()
        partitions = [TopicPartition(self.topic, p) for p in range(self.assigned)]
        ends = [self.consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in partitions]

        def caught_up() -> bool:
            self.poll(0.05)
            positions = self.consumer.position(partitions)
            return all(end == 0 or tp.offset >= end for tp, end in zip(positions, ends, strict=True))

        wait_until(caught_up, timeout, f"{self.topic} read to its end offsets {ends}", interval=0)
        return self.messages

    def values(self) -> list[dict[str, Any]]:
        return [orjson.loads(m.value()) for m in self.messages]

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.consumer.close()


def committed_to_end(stack: Stack, group: str, topic: str) -> bool:
    """``group``'s committed offsets on ``topic`` are at its end offsets: every record there was
    processed and, for the fraudlens roles (which commit only what their output acks cover),
    everything it caused is on the output topics."""
    consumer = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": group, "log_level": 2})
    try:
        partitions = [TopicPartition(topic, p) for p in range(stack.topic_partitions(topic))]
        committed = consumer.committed(partitions, timeout=10)
        ends = [consumer.get_watermark_offsets(tp, timeout=10)[1] for tp in partitions]
        return all(end == 0 or tp.offset == end for tp, end in zip(committed, ends, strict=True))
    finally:
        consumer.close()


def diagnose_missing(stack: Stack, wanted: set[str], seen: set[str]) -> str:
    """Where the transactions without a verdict sit, and what the group committed there."""
    import collections

    missing = wanted - seen
    inputs = TopicReader(stack.bootstrap, "transactions")
    try:
        located = {
            orjson.loads(m.value())["transaction_id"]: (m.partition(), m.offset()) for m in inputs.poll(2.0)
        }
    finally:
        inputs.close()
    spots = sorted(located[t] for t in missing if t in located)
    per_partition = collections.Counter(p for p, _ in spots)
    consumer = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": stack.app_id})
    try:
        partitions = [
            TopicPartition("transactions", p) for p in range(stack.topic_partitions("transactions"))
        ]
        committed = [(tp.partition, tp.offset) for tp in consumer.committed(partitions, timeout=10)]
    finally:
        consumer.close()
    return (
        f"{len(missing)} without verdict; per partition {dict(per_partition)}; "
        f"first {spots[:12]}; committed {committed}"
    )


class SteadyProducer(threading.Thread):
    """Sends transactions at a steady rate until stopped; remembers what it sent and when."""

    def __init__(self, stack: Stack, rate: float, seed: int) -> None:
        super().__init__(daemon=True)
        self.stack, self.rate, self.seed = stack, rate, seed
        self.sent: list[tuple[float, str]] = []
        self.spots: dict[str, tuple[int, int]] = {}  # txid -> (partition, offset), from the ack
        self.transactions: dict[str, dict[str, Any]] = {}  # txid -> the transaction, once acked
        self.stop = threading.Event()

    def run(self) -> None:
        producer = self.stack.producer()

        def acked(err: Any, message: Any) -> None:  # only what the broker accepted counts
            if err is None:
                tx = orjson.loads(message.value())
                txid = tx["transaction_id"]
                self.transactions[txid] = tx
                self.sent.append((time.monotonic(), txid))
                self.spots[txid] = (message.partition(), message.offset())

        for tx in generate_transactions(100_000, seed=self.seed):
            if self.stop.wait(1 / self.rate):
                break
            producer.produce(
                "transactions", key=tx["card_id"].encode(), value=orjson.dumps(tx), on_delivery=acked
            )
            producer.poll(0)
        producer.flush(30)

    def finish_and_expect_verdicts(
        self, stack: Stack, verdicts: TopicReader, timeout: float = 60
    ) -> set[str]:
        """Stop sending; wait until everything the broker acked has a verdict (else say where the
        missing ones sit). Returns the ids sent."""
        self.stop.set()
        self.join(30)
        wanted = {txid for _, txid in self.sent}
        try:
            verdicts.read_until(lambda m: wanted <= {x.key().decode() for x in m}, timeout, "every verdict")
        except AssertionError as exc:
            seen = {x.key().decode() for x in verdicts.messages}
            spots = sorted(self.spots[t] for t in wanted - seen)
            where = diagnose_missing(stack, wanted, seen)
            raise AssertionError(f"{exc}: {where}; acked at {spots}") from None
        return wanted


# -- the relay (issue 4) ----------------------------------------------------------------------------

RELAY_TOKEN_SECRET = os.urandom(16).hex()  # one per test session; tests sign tokens with it


@dataclass
class RelayProcess:
    """A running ``fraudlens relay`` on its own free port."""

    process: Process
    port: int

    @property
    def http(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def ws(self) -> str:
        return f"ws://127.0.0.1:{self.port}/ws"

    def token(self, ttl: float = 600) -> str:
        from app.relay.tokens import create_token

        return create_token(RELAY_TOKEN_SECRET.encode(), ttl, time.time(), "test")

    def get(self, path: str, token: str | None = None) -> tuple[int, dict[str, Any]]:
        """GET a JSON page of the relay: (status, body)."""
        import urllib.error
        import urllib.request

        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(self.http + path, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=5) as answer:
                return answer.status, orjson.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, orjson.loads(exc.read() or b"{}")

    def stats(self) -> dict[str, Any]:
        status, body = self.get("/api/stats", self.token())
        assert status == 200, body
        return body


def start_relay(
    stack: Stack,
    name: str = "relay",
    port: int | None = None,
    timeout: float = 60,
    wait: bool = True,
    **env: str,
) -> RelayProcess:
    """Start a relay of ``stack`` on ``port`` (default: a free one; pass the old one to keep the
    URL across restarts) and, with ``wait``, wait until it says ready (it has read its topics)."""
    port = port or free_port()
    process = stack.spawn(
        name, ["relay"], FRAUDLENS_RELAY_PORT=str(port), FRAUDLENS_TOKEN_SECRET=RELAY_TOKEN_SECRET, **env
    )
    relay = RelayProcess(process, port)

    def ready() -> bool:
        assert process.alive(), process.tail()
        try:
            return relay.get("/healthz")[1].get("ready") is True
        except OSError:
            return False

    if wait:
        wait_until(ready, timeout, "the relay to serve")
    return relay


def of_kind(updates: Iterable[dict[str, Any]], kind: str = "contributions") -> list[dict[str, Any]]:
    """The ``explanation.updates`` messages of ``kind`` (one without ``kind`` is a contributions
    update: the schema)."""
    return [u for u in updates if u.get("kind", "contributions") == kind]


def counterfactual_decisions() -> frozenset[str]:
    """The decisions a stack's explainers route a counterfactual for by themselves: their
    settings, from this process's environment (they inherit it) or the default."""
    from app.settings import Settings

    return frozenset(Settings().explain_counterfactual_decisions)


# -- supervision and broker faults (issue 23) -------------------------------------------------------


@dataclass
class Supervised:
    """One role under :class:`Supervisor`: its current process and the exits it was restarted after."""

    role: str
    env: dict[str, str]
    process: Process
    exits: list[tuple[int, int]] = field(default_factory=list)  # (pid, exit code) restarted after


class Supervisor(threading.Thread):
    """``Restart=on-failure`` for a test stack: a role that exits with a non-zero code is started
    again (after ``backoff_s``), and the restart counted; one that exits 0 is left stopped. The
    restarts are what the test reports (the fault suite prints them in the ledger)."""

    def __init__(self, stack: Stack, backoff_s: float = 1.0) -> None:
        super().__init__(daemon=True, name="supervisor")
        self.stack, self.backoff_s = stack, backoff_s
        self.roles: dict[str, Supervised] = {}
        self.lock = threading.Lock()
        self.halt = threading.Event()
        self.start()

    def start_role(self, name: str, role: str, **env: str) -> Process:
        process = self.stack.start_worker(role, **env)
        with self.lock:
            self.roles[name] = Supervised(role, env, process)
        return process

    def current(self, name: str) -> Process:
        with self.lock:
            return self.roles[name].process

    def restarts(self) -> dict[str, list[tuple[int, int]]]:
        with self.lock:
            return {name: list(s.exits) for name, s in self.roles.items() if s.exits}

    def run(self) -> None:
        while not self.halt.wait(0.2):
            with self.lock:
                for supervised in self.roles.values():
                    code = supervised.process.popen.poll()
                    if code is None or code == 0 or self.halt.is_set():
                        continue
                    supervised.exits.append((supervised.process.pid, code))
                    time.sleep(self.backoff_s)  # the restart's backoff (a supervisor's, not a wait)
                    supervised.process = self.stack.start_worker(supervised.role, **supervised.env)

    def stop(self) -> None:
        self.halt.set()
        self.join(10)


def start_broker_on(stack: Stack, data_dir: Path, *extra: str, timeout: float = 120) -> Process:
    """``fraudlens broker`` on the stack's port and ``data_dir``, in a process group of its own
    (so a fault can SIGKILL the group, as a terminal or a supervisor would)."""
    ready = stack.root / f"broker-ready-{len(stack.processes)}"
    args = ["broker", "--port", str(stack.broker_port), "--data-dir", str(data_dir),
            "--ready-file", str(ready), *extra]  # fmt: skip
    process = stack.spawn("broker", args, own_group=True)
    wait_until(lambda: ready.exists() or not process.alive(), timeout, "the broker to answer")
    assert process.alive(), process.tail()
    return process


def broker_tree(broker: Process) -> list[psutil.Process]:
    """The broker's process and every descendant (noida-db), while they run."""
    try:
        root = psutil.Process(broker.pid)
        return [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return []


def still_running(processes: Iterable[psutil.Process]) -> list[str]:
    """Those of ``processes`` (remembered earlier, so identity is checked by create time) still
    running and not zombies: orphans if their parent was killed."""
    alive = []
    for process in processes:
        try:
            if process.is_running() and process.status() != psutil.STATUS_ZOMBIE:
                alive.append(f"{process.name()} pid {process.pid}")
        except psutil.NoSuchProcess:
            continue
    return alive
