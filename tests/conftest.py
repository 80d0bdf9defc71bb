"""Shared fixtures (a small trained model for the whole session), and the rule that no test skips."""

from __future__ import annotations

from pathlib import Path

import pytest

_SKIPPED: list[str] = []


@pytest.fixture(scope="session")
def models_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A registry holding one model trained on a small generated set (fast, same code path)."""
    from app.model.training import train

    root = tmp_path_factory.mktemp("models")
    train(rows=40_000, seed=7, registry_dir=root, progress=False)
    return root


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _SKIPPED.append(report.nodeid)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:  # a whole module skipped at import (importorskip, a module-level skip)
        _SKIPPED.append(report.nodeid)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _SKIPPED:
        terminalreporter.write_line(
            f"{len(_SKIPPED)} skipped: a skip is a failure here (a test that did not run proves "
            f"nothing; deselect with -m instead): {', '.join(_SKIPPED[:10])}",
            red=True,
        )


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """Any skipped test fails the run (make test: STYLE, 'never skip in CI')."""
    if _SKIPPED and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
