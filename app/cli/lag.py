"""``fraudlens lag``: the explanation-gap monitor (see :mod:`app.ops.lag_monitor`)."""

from __future__ import annotations

import json
import time

import click


def run_lag(watch: bool, every: float, window: float, target: float, as_json: bool) -> int:
    from confluent_kafka import KafkaException

    from app.ops.lag_monitor import LagMonitor, render
    from app.settings import get_settings

    settings = get_settings()
    try:
        monitor = LagMonitor(settings, window, target)
    except KafkaException as exc:
        raise click.ClickException(f"cannot reach Kafka at {settings.bootstrap_servers}: {exc}") from None
    try:
        while True:
            try:
                snapshot = monitor.snapshot()
            except LookupError as exc:
                raise click.ClickException(str(exc)) from None
            except KafkaException as exc:
                raise click.ClickException(
                    f"cannot read from Kafka at {settings.bootstrap_servers}: {exc}"
                ) from None
            if as_json:
                click.echo(json.dumps(snapshot))
            else:
                if watch:
                    click.clear()
                click.echo(render(snapshot))
            if not watch:
                return 0
            time.sleep(every)  # the refresh period of a watch, not a synchronisation
    except KeyboardInterrupt:
        return 0
    finally:
        monitor.close()
