"""Fault-suite fixtures: the seed of every random fault moment, and one stack per scenario."""

from __future__ import annotations

import os
import random
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.chaos.faults import start_broker
from tests.integration.harness import Stack


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/chaos" in str(item.fspath):
            item.add_marker(pytest.mark.chaos)


@pytest.fixture(scope="session")
def chaos_seed() -> int:
    """CHAOS_SEED=N replays a run's fault moments; otherwise a fresh one, printed."""
    seed = int(os.environ.get("CHAOS_SEED") or random.SystemRandom().randrange(1, 10**9))
    print(f"\nfault suite seed {seed} (replay: make chaos CHAOS_SEED={seed})", flush=True)
    return seed


@pytest.fixture
def stack(tmp_path: Path, models_dir: Path) -> Iterator[Stack]:
    stack = Stack(root=tmp_path, models_dir=models_dir)
    try:
        start_broker(stack)
        yield stack
    finally:
        stack.stop_all()
