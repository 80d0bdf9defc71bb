"""The fault suite's stack: the harness's processes, a broker that keeps an explanation backlog,
faults at random (seeded) moments measured in traffic, and the ledger at the end."""

from __future__ import annotations

import os
import random
import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.chaos.ledger import ChaosLoad, Ledger, Tap, assert_clean
from tests.integration.harness import Process, Stack, wait_until

RATE = float(os.environ.get("CHAOS_RATE", "500"))
BAD_SHARE = 0.02
# Low-priority verdicts explained unasked. At 500 tx/s about 400/s are low; one explainer computes
# ~150-300/s on this machine, so the rest are sampled out (by a hash of the id, the same in the
# explainers and in the ledger) and counted separately, never left out silently.
LOW_SAMPLE_RATE = os.environ.get("CHAOS_LOW_SAMPLE_RATE", "0.1")
# The broker deletes records older than this even when unconsumed; the explain queues must outlive
# a backlog built under load (default 60 s), so the fault suite raises it.
BROKER_RETENTION_S = "300"
WORKER_ENV = {
    "FRAUDLENS_EXPLAIN_LOW_SAMPLE_RATE": LOW_SAMPLE_RATE,
    "FRAUDLENS_EXPLAIN_STATS_EVERY_S": "2",
}
EXPLAINED = re.compile(r"explainer pid \d+: explained (\d+) ")


def start_broker(stack: Stack) -> Process:
    """The embedded broker on the stack's port and data dir (the same on every restart)."""
    ready = stack.root / f"broker-ready-{len(stack.processes)}"
    args = ["broker", "--port", str(stack.broker_port), "--data-dir", str(stack.root / "data" / "broker"),
            "--ready-file", str(ready), "--max-retention", BROKER_RETENTION_S]  # fmt: skip
    process = stack.spawn("broker", args)
    wait_until(lambda: ready.exists() or not process.alive(), 120, "the broker to answer")
    assert process.alive(), process.tail()
    return process


def explained(process: Process) -> int:
    """The latest 'explained N' an explainer process logged."""
    found = EXPLAINED.findall(process.log.read_text(errors="replace")) if process.log.exists() else []
    return int(found[-1]) if found else 0


@dataclass
class Scenario:
    """One scenario's run: its load, its tap, its faults (seeded), its ledger."""

    name: str
    stack: Stack
    seed: int
    notes: list[str] = field(default_factory=list)
    ended: set[int] = field(default_factory=set)  # pids of processes the scenario stopped itself

    def __post_init__(self) -> None:
        self.rng = random.Random(f"{self.seed}-{self.name}")
        self.started = time.monotonic()
        self.tap = Tap(self.stack)
        self.load = ChaosLoad(self.stack, RATE, self.rng.randrange(2**31), BAD_SHARE)
        self.ledger = Ledger(self.stack, self.load, self.tap, float(LOW_SAMPLE_RATE))

    def worker(self, role: str, instance: str | None = None) -> Process:
        env = dict(WORKER_ENV)
        if instance:
            env["FRAUDLENS_INSTANCE_ID"] = instance
        return self.stack.start_worker(role, **env)

    def kill(self, process: Process) -> None:
        """SIGKILL (the process and its children)."""
        self.ended.add(process.pid)
        process.kill()
        self.note(f"SIGKILL {process.name} pid {process.pid}")

    def stop(self, process: Process) -> None:
        """SIGTERM, and wait for the process to exit."""
        self.ended.add(process.pid)
        process.stop(timeout=60)
        self.note(f"stopped {process.name} pid {process.pid} (SIGTERM, exit code {process.popen.returncode})")

    def note(self, text: str) -> None:
        line = f"t={time.monotonic() - self.started:6.1f}s acked={self.load.acked_count():6d} {text}"
        self.notes.append(line)
        print(f"  [{self.name}] {line}", flush=True)

    def start_load(self) -> None:
        """Start the load and wait until verdicts flow (the stack is up)."""
        self.load.start()
        self.verdicts_resume(180, "first verdicts")
        self.note(f"load running at {RATE:.0f} msg/s ({BAD_SHARE:.0%} malformed)")

    def random_traffic(self, low_s: float = 2.0, high_s: float = 6.0) -> None:
        """Let a random amount of traffic (``low_s``..``high_s`` seconds' worth) be acked: the
        fault then lands at a random moment of the stream."""
        target = self.load.acked_count() + int(RATE * self.rng.uniform(low_s, high_s))
        wait_until(lambda: self.load.acked_count() >= target, 300, f"{target} acked messages")

    def verdicts_resume(self, timeout: float, what: str) -> None:
        """Wait until 100 transactions acked from now on have their verdicts."""
        mark = len(self.load.valid_order)

        def resumed() -> bool:
            later = self.load.valid_order[mark : mark + 2000]
            return sum(t in self.tap.verdicts for t in later) >= 100

        wait_until(resumed, timeout, what, interval=0.2)

    def explains_again(self, process: Process, timeout: float = 180) -> None:
        wait_until(lambda: explained(process) > 0, timeout, f"{process.name} pid {process.pid} to explain")

    def finish(self) -> None:
        """Stop the load, wait until the stack settles, print the ledger and check it."""
        self.load.finish()
        self.note("load stopped; settling")
        self.ledger.settle()
        dead = [
            f"{p.name} pid {p.pid}" for p in self.stack.processes if p.pid not in self.ended and not p.alive()
        ]
        self.note(f"processes that exited on their own: {dead or 'none'}")
        figures = self.ledger.report(self.name, self.seed, self.notes)
        assert_clean(figures, str(self.stack.root / "logs"))
        assert not dead, f"{dead} exited on their own; logs in {self.stack.root / 'logs'}"

    def close(self) -> None:
        self.load.stop.set()
        self.tap.close()


def wipe(path: Path) -> None:
    import shutil

    assert path.exists(), f"{path} missing: nothing to wipe"
    shutil.rmtree(path)
