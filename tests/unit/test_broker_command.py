"""``fraudlens broker`` starts the development broker as a process and never imports it: the
command line it execs (``python -m fraudlens_devbroker``) carries every option and what the broker
must know of fraudlens (its topics, the ones users read); without the package it exits 69 with
one line, and so does ``fraudlens up`` when it would start one. The broker's side of the contract
(its parser, its default window, which client ids wait) is read here from the package itself."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from app.cli import broker as broker_cli
from app.cli.main import cli
from app.kafka import topics
from app.settings import get_settings

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def execed(monkeypatch: pytest.MonkeyPatch) -> list[tuple[list[str], str | None]]:
    """What ``fraudlens broker`` would exec, instead of exec'ing it."""
    calls: list[tuple[list[str], str | None]] = []

    def record(command: list[str], parent_pid: str | None) -> None:
        calls.append((command, parent_pid))

    monkeypatch.setattr(broker_cli, "exec_broker", record)
    monkeypatch.setattr("app.runtime.priority.favour_verdict_path", lambda *_: "")  # not this process's nice
    get_settings.cache_clear()
    yield calls
    get_settings.cache_clear()


def _options(command: list[str]) -> dict[str, str]:
    assert command[:3] == [sys.executable, "-m", "fraudlens_devbroker"], command
    flags = command[3:]
    return dict(zip(flags[::2], flags[1::2], strict=True))


def test_the_broker_gets_every_option_and_the_apps_topics(
    execed: list[tuple[list[str], str | None]], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fraudlens_devbroker.__main__ import parser

    monkeypatch.setenv("FRAUDLENS_PARTITIONS", "3")
    args = [
        "--log-level", "debug", "broker", "--port", "19092", "--data-dir", str(tmp_path / "b"),
        "--ready-file", str(tmp_path / "ready"), "--max-retention", "30", "--fetch-coalesce-ms", "0",
    ]  # fmt: skip
    result = CliRunner().invoke(cli, args, obj={"parent_pid": "4242"})

    assert result.exit_code == 0, result.output
    [(command, parent_pid)] = execed
    options = _options(command)
    assert parent_pid == "4242"  # the broker arms the parent watch again after the exec
    assert options["--port"] == "19092" and options["--data-dir"] == str(tmp_path / "b")
    assert options["--ready-file"] == str(tmp_path / "ready") and options["--log-level"] == "debug"
    assert options["--create-topics"].split(",") == list(topics.APP_TOPICS)
    assert options["--partitions"] == "3"
    assert set(options["--time-retention-only"].split(",")) == topics.READ_BY_USERS
    parsed = parser().parse_args(command[3:])  # the broker accepts the line as it is
    assert (parsed.max_retention, parsed.fetch_coalesce_ms, parsed.port) == (30.0, 0.0, 19092)


def test_the_data_dir_defaults_to_the_settings_one(
    execed: list[tuple[list[str], str | None]], tmp_path: Path
) -> None:
    result = CliRunner().invoke(cli, ["broker"], env={"FRAUDLENS_DATA_DIR": str(tmp_path)})

    assert result.exit_code == 0, result.output
    options = _options(execed[0][0])
    assert options["--data-dir"] == str(tmp_path / "broker") and "--ready-file" not in options


def test_the_topics_users_read_are_declared_once() -> None:
    assert {topics.VERDICTS, topics.EXPLANATION_UPDATES, topics.TRANSACTIONS_DLQ} <= topics.READ_BY_USERS
    assert topics.READ_BY_USERS.issubset(topics.APP_TOPICS)  # pre-created, partitions and all
    assert topics.TRANSACTIONS not in topics.READ_BY_USERS  # the input: trimmed once consumed


def test_the_window_setting_reads_milliseconds_and_refuses_nonsense(
    execed: list[tuple[list[str], str | None]],
) -> None:
    """``fraudlens broker --fetch-coalesce-ms`` / ``FRAUDLENS_BROKER_FETCH_COALESCE_MS``: a
    number of ms in 0-1000 (50 by default, the broker's own default too), anything else a
    one-line usage error before start."""
    from fraudlens_devbroker.embedded import DEFAULT_FETCH_COALESCE_MS

    runner = CliRunner()
    assert broker_cli.DEFAULT_FETCH_COALESCE_MS == DEFAULT_FETCH_COALESCE_MS
    assert "--fetch-coalesce-ms FINITE FLOAT RANGE" in runner.invoke(cli, ["broker", "--help"]).output
    assert "[default: 50.0;" in " ".join(runner.invoke(cli, ["broker", "--help"]).output.split())
    for bad in ("-1", "soon", "5000", "nan", "inf"):
        for args, env in (
            (["--fetch-coalesce-ms", bad], {}),
            ([], {"FRAUDLENS_BROKER_FETCH_COALESCE_MS": bad}),
        ):
            result = runner.invoke(cli, ["broker", "--port", "1", *args], env=env)
            assert result.exit_code == 2, (bad, env, result.output)
            assert "Invalid value for '--fetch-coalesce-ms'" in result.output, result.output
    assert not execed, "a value the option should refuse started the broker"


def test_the_explainer_waits_and_the_scorer_does_not_by_the_client_ids_they_send(tmp_path: Path) -> None:
    from app.explainer.faust_app import create_app
    from app.scorer.loop import consumer_config
    from app.settings import Settings
    from fraudlens_devbroker.shim import tolerates_coalescing

    settings = Settings(data_dir=tmp_path)

    assert tolerates_coalescing(create_app(settings).conf.broker_client_id)
    assert not tolerates_coalescing(consumer_config(settings)["client.id"])


@pytest.mark.parametrize("args", [["broker"], ["up", "--rate", "0"]], ids=["broker", "up"])
def test_without_the_package_broker_and_up_exit_69_in_one_line(
    args: list[str], execed: list[tuple[list[str], str | None]], monkeypatch: pytest.MonkeyPatch
) -> None:
    def nothing_starts(*_args: Any, **_kwargs: Any) -> None:
        raise AssertionError("started something without the broker package")

    monkeypatch.setattr(broker_cli, "PACKAGE", "fraudlens_devbroker_not_installed")
    monkeypatch.setattr("app.cli.up.Stack.start", nothing_starts)
    monkeypatch.delenv("FRAUDLENS_BROKER", raising=False)

    result = CliRunner().invoke(cli, args)

    assert result.exit_code == broker_cli.EX_UNAVAILABLE == 69, result.output
    assert "Traceback" not in result.output and not execed
    [line] = result.output.splitlines()
    assert line.startswith("Error: the development broker is not installed")
    assert "pip install -e devbroker" in line and "FRAUDLENS_BROKER" in line


def test_the_product_never_imports_the_broker() -> None:
    """Every module of app/ imported in a fresh interpreter leaves fraudlens_devbroker unloaded."""
    script = (
        "import pkgutil, importlib, sys, app\n"
        "for m in pkgutil.walk_packages(app.__path__, 'app.'):\n"
        "    importlib.import_module(m.name)\n"
        "loaded = [name for name in sys.modules if name.startswith(('fraudlens_devbroker', 'noida_db'))]\n"
        "assert not loaded, loaded\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
