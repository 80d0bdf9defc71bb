"""`fraudlens models` and the scorer's switch to a promoted model."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import lightgbm as lgb
import pytest
from click.testing import CliRunner

from app.cli.main import cli
from app.model.predictor import ModelScorer
from app.model.registry import MODEL_FILE, Registry
from app.scorer.loop import ModelWatcher
from app.settings import get_settings


def second_version(registry: Registry) -> str:
    """The current booster registered again with other thresholds: a new version, not current."""
    first = registry.current()
    assert first is not None
    meta = registry.load_meta(first)
    booster = lgb.Booster(model_file=str(registry.path(first) / MODEL_FILE))
    thresholds = {"review": meta["thresholds"]["review"] / 2, "deny": meta["thresholds"]["deny"]}
    training = dict(meta["training"], created_at="2099-01-01T00:00:00Z")
    return registry.register(booster, meta["feature_names"], thresholds, meta["metrics"], training, False)


@pytest.fixture
def registry(tmp_path: Path, models_dir: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Registry]:
    root = tmp_path / "models"
    shutil.copytree(models_dir, root)
    monkeypatch.setenv("FRAUDLENS_MODELS_DIR", str(root))
    get_settings.cache_clear()
    yield Registry(root)
    get_settings.cache_clear()


def test_list_marks_current_and_json_lists_every_version(registry: Registry) -> None:
    other = second_version(registry)
    runner = CliRunner()
    table = runner.invoke(cli, ["models", "list"])
    assert table.exit_code == 0, table.output
    assert f"* {registry.current()}" in table.output and f"  {other}" in table.output
    rows = json.loads(runner.invoke(cli, ["models", "list", "--json"]).output)
    assert [r["version"] for r in rows] == registry.versions()
    assert [r["current"] for r in rows] == [True, False]


def test_show_prints_meta_and_promote_moves_current(registry: Registry) -> None:
    first, other = registry.current(), second_version(registry)
    runner = CliRunner()
    shown = json.loads(runner.invoke(cli, ["models", "show", other]).output)
    assert shown["version"] == other and shown["current"] is False
    promoted = runner.invoke(cli, ["models", "promote", other])
    assert promoted.exit_code == 0 and f"{first} -> {other}" in promoted.output
    assert registry.current() == other


@pytest.mark.parametrize("command", ["show", "promote"])
@pytest.mark.parametrize("version", ["0123456789ab", "../../etc", ""])
def test_unknown_version_is_a_one_line_error(registry: Registry, command: str, version: str) -> None:
    before = registry.current()
    result = CliRunner().invoke(cli, ["models", command, version])
    assert result.exit_code == 1 and isinstance(result.exception, SystemExit)
    assert result.output.count("\n") == 1 and result.output.startswith("Error: ")
    assert registry.current() == before


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_watcher_switches_after_the_interval_and_pinned_never(registry: Registry) -> None:
    current = ModelScorer(registry.root)
    other = second_version(registry)
    clock = Clock()
    watcher = ModelWatcher(registry, pinned=False, interval_s=1.0, clock=clock)
    pinned = ModelWatcher(registry, pinned=True, interval_s=1.0, clock=clock)
    registry.set_current(other)
    assert watcher.newer(current) is None  # not yet: checked at most once per interval
    clock.now = 1.5
    switched = watcher.newer(current)
    assert switched is not None and switched.version == other
    assert watcher.newer(switched) is None
    assert pinned.newer(current) is None


def test_watcher_keeps_scoring_when_the_promoted_model_cannot_load(
    registry: Registry, caplog: pytest.LogCaptureFixture
) -> None:
    current = ModelScorer(registry.root)
    other = second_version(registry)
    registry.set_current(other)
    (registry.path(other) / MODEL_FILE).write_text("not a model")
    clock = Clock()
    watcher = ModelWatcher(registry, pinned=False, interval_s=1.0, clock=clock)
    clock.now = 2.0
    assert watcher.newer(current) is None
    assert "cannot be loaded" in caplog.text
    clock.now = 4.0
    assert watcher.newer(current) is None  # not retried every interval
