"""The development broker's tests: fraudlens's rule that no test skips holds here too (this
directory is outside tests/, whose conftest enforces it for the product's tests)."""

from __future__ import annotations

import pytest

_SKIPPED: list[str] = []


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.skipped and not hasattr(report, "wasxfail"):
        _SKIPPED.append(report.nodeid)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.skipped:  # a whole module skipped at import (importorskip, a module-level skip)
        _SKIPPED.append(report.nodeid)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if _SKIPPED and exitstatus in (pytest.ExitCode.OK, pytest.ExitCode.NO_TESTS_COLLECTED):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        session.config.get_terminal_writer().line(
            f"{len(_SKIPPED)} skipped in devbroker/tests: a skip is a failure: {', '.join(_SKIPPED[:10])}",
            red=True,
        )
