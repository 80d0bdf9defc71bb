"""Shared fixtures: a small trained model for the whole session (the no-skip rule: ../conftest.py)."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry holding one model trained on a small generated set (fast, same code path)."""
    from app.model.training import train

    root = tmp_path_factory.mktemp("models")
    train(rows=40_000, seed=7, registry_dir=root, progress=False)
    return root
