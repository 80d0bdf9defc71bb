"""`fraudlens models promote` switches a running scorer: no restart, nothing lost or doubled."""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson

from app.model.registry import Registry
from tests.integration.harness import REPO, Stack, SteadyProducer
from tests.unit.test_models import second_version


def test_promote_switches_new_verdicts_without_restart(tmp_path: Path, models_dir: Path) -> None:
    root = tmp_path / "models"
    shutil.copytree(models_dir, root)
    registry = Registry(root)
    first, other = registry.current(), second_version(registry)
    stack = Stack(root=tmp_path, models_dir=root)
    stack.start_broker()
    try:
        scorer = stack.start_worker("scorer")
        load = SteadyProducer(stack, rate=100, seed=51)
        load.start()
        verdicts = stack.reader("verdicts")
        verdicts.read_until(lambda m: len(m) >= 100, 90, "verdicts with the first model")
        promote = subprocess.run(
            [sys.executable, "-m", "app.cli.main", "models", "promote", other],
            cwd=REPO, env=stack.env(), capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert promote.returncode == 0, promote.stderr
        promoted_at = time.monotonic()

        def versions(messages: list[Any]) -> list[str]:
            return [orjson.loads(m.value())["model_version"] for m in messages]

        # The watcher looks every second; a generous bound here, the time itself is printed
        # (how fast a promotion takes effect is a benchmark's figure, not this test's claim).
        verdicts.read_until(lambda m: other in versions(m), 120, f"a verdict scored by {other}")
        print(f"\nfirst verdict of {other} {time.monotonic() - promoted_at:.1f} s after the promotion")
        sent_at_switch = len(load.sent)
        verdicts.read_until(lambda m: len(m) >= sent_at_switch + 100, 60, "verdicts after the switch")
        load.finish_and_expect_verdicts(stack, verdicts)
        by_id: dict[str, set[bytes]] = {}
        for message in verdicts.messages:
            by_id.setdefault(message.key().decode(), set()).add(message.value())
        assert all(len(values) == 1 for values in by_id.values()), "a transaction got two verdicts"
        per_partition: dict[int, list[str]] = {}
        for message in verdicts.messages:
            per_partition.setdefault(message.partition(), []).append(
                orjson.loads(message.value())["model_version"]
            )
        for partition, order in per_partition.items():  # the switch is one moment, in every partition
            switch = order.index(other) if other in order else len(order)
            assert set(order[:switch]) <= {first} and set(order[switch:]) <= {other}, partition
        assert scorer.alive() and "promoted" in scorer.tail(200)
    finally:
        stack.stop_all()
