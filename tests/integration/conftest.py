"""Integration fixtures: every test gets its own real broker on a free port."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.harness import Stack


@pytest.fixture
def stack(tmp_path: Path, models_dir: Path) -> Iterator[Stack]:
    stack = Stack(root=tmp_path, models_dir=models_dir)
    stack.start_broker()
    try:
        yield stack
    finally:
        stack.stop_all()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
