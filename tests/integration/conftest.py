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


@pytest.fixture(scope="module")
def scored(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Stack]:
    """One broker and one scorer shared by a module's tests (each uses its own ids and groups)."""
    stack = Stack(root=tmp_path_factory.mktemp("scored"), models_dir=models_dir)
    stack.start_broker()
    try:
        stack.start_worker("scorer")
        yield stack
    finally:
        stack.stop_all()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if "tests/integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)
