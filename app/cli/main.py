"""``fraudlens``: every command of the project. Each command's docstring is its help."""

from __future__ import annotations

import logging
import os
import re
import sys
from pathlib import Path
from typing import Any

import click

from app.cli.broker import DEFAULT_FETCH_COALESCE_MS
from app.cli.types import FiniteRange
from app.records.kinds import ASKABLE_KINDS, KINDS
from app.settings import DEFAULT_BROKER_PORT


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--log-level",
    default="info",
    envvar="FRAUDLENS_LOG_LEVEL",
    show_default=True,
    type=click.Choice(["debug", "info", "warning", "error"]),
)
@click.pass_obj
def cli(obj: dict[str, Any] | None, log_level: str) -> None:
    """fraudlens: streaming fraud scoring that answers at once and explains itself later."""
    if obj is not None:
        obj["log_level"] = log_level  # `fraudlens broker` hands it to the broker it execs
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    from app.runtime import logredact

    logredact.install()  # no token or password in any log line, whoever logs it


@cli.command()
@click.option(
    "--port",
    default=DEFAULT_BROKER_PORT,
    show_default=True,
    type=click.IntRange(1, 65535),
    envvar="FRAUDLENS_BROKER_PORT",
    help="Port clients connect to.",
)
@click.option(
    "--data-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the broker keeps its data [default: $FRAUDLENS_DATA_DIR/broker].",
)
@click.option(
    "--ready-file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write host:port here once the broker answers Metadata.",
)
@click.option(
    "--max-retention",
    default=60.0,
    show_default=True,
    type=FiniteRange(min=1),
    envvar="FRAUDLENS_BROKER_MAX_RETENTION_S",
    help="Seconds any deletable record is kept (noida-db's cost grows with what it stores).",
)
@click.option(
    "--fetch-coalesce-ms",
    default=DEFAULT_FETCH_COALESCE_MS,
    show_default=True,
    type=FiniteRange(min=0, max=1000),
    envvar="FRAUDLENS_BROKER_FETCH_COALESCE_MS",
    help="How long a parked fetch of a Faust client (the explainer), woken by a produce, waits for "
    "more records; every other client is answered at once (0: nobody waits).",
)
@click.pass_obj
def broker(
    obj: dict[str, Any] | None,
    port: int,
    data_dir: Path | None,
    ready_file: Path | None,
    max_retention: float,
    fetch_coalesce_ms: float,
) -> None:
    """Run the embedded Kafka-protocol broker (noida-db behind the fraudlens shim) until Ctrl-C,
    SIGTERM or SIGHUP. One broker per data directory: a directory held by a running broker is
    refused; a noida-db left running there by a broker that was killed is stopped first.
    For development and tests: it needs the fraudlens-devbroker package (`make` installs it;
    without it this exits 69, naming what to install)."""
    from app.cli.broker import broker_command, exec_broker, require_installed
    from app.runtime.priority import favour_verdict_path
    from app.settings import get_settings

    require_installed()
    settings = get_settings()
    # Before the broker forks noida-db (exec keeps the nice, noida-db inherits it).
    favour_verdict_path("broker", settings.verdict_path_nice)
    obj = obj or {}
    command = broker_command(
        settings, port, data_dir or settings.data_dir / "broker", ready_file, max_retention,
        fetch_coalesce_ms, obj.get("log_level", "info"),
    )  # fmt: skip
    exec_broker(command, obj.get("parent_pid"))  # `python -m fraudlens_devbroker`, in this process


@cli.command()
@click.option(
    "--role", required=True, type=click.Choice(["scorer", "explainer", "relay"]), help="Which agents to run."
)
def worker(role: str) -> None:
    """Run one worker process of a role (scorer: transactions → verdicts; explainer: verdicts →
    explain.<priority> → explanation.updates, at lower OS priority)."""
    from app.cli.worker import run_worker

    run_worker(role)


@cli.command()
@click.option("--count", default=1000, show_default=True, type=click.IntRange(min=0))
@click.option("--seed", default=1, show_default=True, type=int)
@click.option("--labels", is_flag=True, help="Add is_fraud and pattern (not valid transactions then).")
def generate(count: int, seed: int, labels: bool) -> None:
    """Print synthetic transactions as JSON lines, seeded and reproducible."""
    from app.cli.data import print_generated

    print_generated(count, seed, labels)


@cli.command()
@click.option("--rows", default=200_000, show_default=True, type=click.IntRange(min=1000))
@click.option("--seed", default=7, show_default=True, type=int)
@click.option(
    "--data",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Train on a CSV of transactions instead of generated ones.",
)
@click.option("--label", default=None, help="The CSV's label column (required with --data).")
def train(rows: int, seed: int, data: Path | None, label: str | None) -> None:
    """Train the LightGBM model on a time split and register it in the model registry."""
    from app.cli.data import run_training

    if data is not None and not label:
        raise click.UsageError("--label is required with --data")
    run_training(rows, seed, data, label)


@cli.command()
@click.option(
    "--rate",
    default=100.0,
    show_default=True,
    type=FiniteRange(min=0, min_open=True),
    help="Messages per second.",
)
@click.option("--count", default=None, type=click.IntRange(min=0), help="Stop after N (default: forever).")
@click.option(
    "--file",
    "file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="JSON lines to send instead of generated transactions.",
)
@click.option(
    "--bad-fraction",
    default=0.0,
    show_default=True,
    type=FiniteRange(0, 1),
    help="Share of deliberately malformed messages.",
)
@click.option("--seed", default=1, show_default=True, type=int)
@click.option(
    "--live-time/--no-live-time",
    default=True,
    show_default=True,
    help="Stamp generated transactions with the current time.",
)
def produce(
    rate: float, count: int | None, file: Path | None, bad_fraction: float, seed: int, live_time: bool
) -> None:
    """Send transactions to Kafka keyed by card_id, paced, with a progress bar and acks."""
    from app.cli.produce import run_producer

    sys.exit(run_producer(rate, count, file, bad_fraction, seed, live_time))


@cli.command()
@click.option(
    "--rate",
    default=50.0,
    show_default=True,
    type=FiniteRange(min=0),
    help="Paced producer rate (0: no producer).",
)
@click.option(
    "--explainers", default=1, show_default=True, type=click.IntRange(0, 16), help="Explainer processes."
)
@click.option(
    "--restart-limit", default=5, show_default=True, type=click.IntRange(min=0),
    envvar="FRAUDLENS_UP_RESTART_LIMIT",
    help="Restarts in a row of a failing child, each failing within --restart-window, before giving up.",
)  # fmt: skip
@click.option(
    "--restart-window", default=60.0, show_default=True, type=FiniteRange(min=0),
    envvar="FRAUDLENS_UP_RESTART_WINDOW_S", help="A run this long (seconds) was healthy: the count restarts.",
)  # fmt: skip
@click.option(
    "--restart-backoff", default=1.0, show_default=True, type=FiniteRange(min=0),
    envvar="FRAUDLENS_UP_RESTART_BACKOFF_S",
    help="First restart delay (seconds); doubles per failure, up to 30.",
)  # fmt: skip
def up(
    rate: float, explainers: int, restart_limit: int, restart_window: float, restart_backoff: float
) -> None:
    """Run broker, scorer, explainers, relay and a paced producer as child processes until Ctrl-C,
    SIGTERM or SIGHUP (every child is stopped in order). A child that fails is restarted with
    backoff; one that keeps failing stops the stack (exit 1). No child outlives `up`, however
    `up` ends (SIGKILL included: the children get a parent-death signal)."""
    from app.cli.up import run_up
    from app.runtime.restarts import RestartPolicy

    policy = RestartPolicy(restart_limit, restart_window, restart_backoff)
    sys.exit(run_up(rate, explainers, policy))


@cli.command()
@click.option("--watch", is_flag=True, help="Refresh until Ctrl-C.")
@click.option(
    "--every",
    default=2.0,
    show_default=True,
    type=FiniteRange(min=0.2),
    help="Seconds between refreshes.",
)
@click.option(
    "--window", default=60.0, show_default=True, type=FiniteRange(min=1), help="Sliding window, seconds."
)
@click.option(
    "--target", default=60.0, show_default=True, type=FiniteRange(min=1),
    help="Drain time the scaling hint aims for, seconds.",
)  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="JSON (one object per refresh) instead of a table.")
def lag(watch: bool, every: float, window: float, target: float, as_json: bool) -> None:
    """Explanation gap per priority, queue depths, in/out rates and how many explainers to run."""
    from app.cli.lag import run_lag

    sys.exit(run_lag(watch, every, window, target, as_json))


@cli.command()
@click.argument("transaction_id")
@click.option("--timeout", default=60.0, show_default=True, type=FiniteRange(min=1), help="Seconds to wait.")
@click.option("--json", "as_json", is_flag=True, help="The explanation update as JSON.")
@click.option(
    "--kind",
    type=click.Choice(ASKABLE_KINDS),
    default=KINDS[0],
    show_default=True,
    help="contributions: why (SHAP values); counterfactual: what would change the verdict; "
    "uncertainty: how sure the model is (its probability interval and prediction set); "
    "similar_cases: the most similar past transactions with known outcomes.",
)
def explain(transaction_id: str, timeout: float, as_json: bool, kind: str) -> None:
    """Request the explanation of TRANSACTION_ID on demand (high priority) and print it when done."""
    from app.cli.on_demand import run_explain

    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}", transaction_id):
        raise click.BadParameter(
            "not a transaction id (schemas/transaction.schema.json)", param_hint="TRANSACTION_ID"
        )
    sys.exit(run_explain(transaction_id, timeout, as_json, kind))


def _register_groups() -> None:
    from app.cli.models import models
    from app.cli.tables import tables
    from app.relay.command import relay, token

    cli.add_command(models)
    cli.add_command(tables)
    cli.add_command(relay)
    cli.add_command(token)


_register_groups()


def main() -> None:
    from app.runtime.lifetime import PARENT_PID_ENV, exit_with_parent

    parent_pid = os.environ.get(PARENT_PID_ENV)  # for `fraudlens broker`, which execs the broker
    exit_with_parent()  # a child of `fraudlens up` ends with it, however `up` ends
    cli(prog_name="fraudlens", obj={"parent_pid": parent_pid})


if __name__ == "__main__":
    main()
