"""``fraudlens broker``: the development broker, started as a process and never imported.

The broker is a package of its own (``devbroker/`` in the repository, distribution
``fraudlens-devbroker``, import name ``fraudlens_devbroker``), installed for development and tests
and absent from the production image, which runs on Apache Kafka (``FRAUDLENS_BROKER``). This
command fills in its command line from the settings and execs ``python -m fraudlens_devbroker``
in its own process: the pid, the parent, the nice, the process group and the parent-death signal
stay those of ``fraudlens broker``, so a supervisor (``fraudlens up``, the tests) sees the same
process whose SIGTERM, SIGHUP or SIGKILL it sends.
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from typing import NoReturn

import click

from app.kafka import topics
from app.runtime.lifetime import PARENT_PID_ENV
from app.settings import Settings

PACKAGE = "fraudlens_devbroker"
DEFAULT_FETCH_COALESCE_MS = 50.0  # measured: docs/cost.md, lever 1 (the broker's default too)
# sysexits.h EX_UNAVAILABLE: a program this command needs is missing. Not 2, click's usage error:
# the command line was right, and a script or supervisor should tell "install it" from "fix the
# arguments"; not 1, which `fraudlens broker` returns for a broker that could not start.
EX_UNAVAILABLE = 69


class BrokerNotInstalled(click.ClickException):
    """The development broker package is missing: one line, exit 69."""

    exit_code = EX_UNAVAILABLE

    def __init__(self) -> None:
        super().__init__(
            "the development broker is not installed (package fraudlens-devbroker: `make`, or "
            "`pip install -e devbroker` in a clone of the fraudlens repository, installs it); "
            "or set FRAUDLENS_BROKER to a running Kafka broker instead of starting one"
        )


def require_installed() -> None:
    """Raise :class:`BrokerNotInstalled` unless the package can be found (it is not imported)."""
    if importlib.util.find_spec(PACKAGE) is None:
        raise BrokerNotInstalled


def broker_command(
    settings: Settings,
    port: int,
    data_dir: Path,
    ready_file: Path | None,
    max_retention_s: float,
    fetch_coalesce_ms: float,
    log_level: str,
) -> list[str]:
    """The broker's command line: the options of ``fraudlens broker``, the app's topics (created at
    start, with the configured partitions) and the ones users read (trimmed by time only)."""
    command = [
        sys.executable, "-m", PACKAGE, "--port", str(port), "--data-dir", str(data_dir),
        "--max-retention", repr(max_retention_s), "--fetch-coalesce-ms", repr(fetch_coalesce_ms),
        "--create-topics", ",".join(topics.APP_TOPICS), "--partitions", str(settings.partitions),
        "--replication-factor", str(settings.replication_factor),
        "--time-retention-only", ",".join(sorted(topics.READ_BY_USERS)),
        "--log-level", log_level,
    ]  # fmt: skip
    if ready_file is not None:
        command += ["--ready-file", str(ready_file)]
    return command


def exec_broker(command: list[str], parent_pid: str | None) -> NoReturn:
    """Become the broker. ``parent_pid``: the ``FRAUDLENS_PARENT_PID`` this process was started
    with (``exit_with_parent`` removed it from the environment): the broker arms the parent
    watch again, since exec ends the thread that kept it."""
    env = dict(os.environ)
    if parent_pid:
        env[PARENT_PID_ENV] = parent_pid
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, command, env)
