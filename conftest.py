"""The rule that no test skips, for every test directory (tests/, devbroker/tests/): a test that
did not run proves nothing, and a declared dependency that does not import is a failure."""

from __future__ import annotations

import pytest

_SKIPPED: list[str] = []


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
