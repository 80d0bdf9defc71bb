"""``fraudlens tables``: inspect the changelog-backed tables (see :mod:`app.ops.table_scan`)."""

from __future__ import annotations

import json
from typing import Any

import click

from app.records.kinds import KINDS


def _settings() -> Any:
    from app.settings import get_settings

    return get_settings()


def _snapshot(name: str) -> tuple[Any, Any]:
    from confluent_kafka import KafkaException

    from app.ops.table_scan import UnknownTable, replay, spec_of

    settings = _settings()
    try:
        spec = spec_of(name)
        return spec, replay(settings, spec)
    except UnknownTable as exc:
        raise click.BadParameter(str(exc), param_hint="TABLE") from None
    except (KafkaException, TimeoutError) as exc:
        raise click.ClickException(f"cannot read from Kafka at {settings.bootstrap_servers}: {exc}") from None


def _summary(value: Any) -> str:
    if not isinstance(value, dict):
        return str(value)[:60]
    keys = ("kind", "status", "priority", "decision", "model_version", "attempts", "n")
    parts = [f"{k}={value[k]}" for k in keys if k in value]
    return " ".join(parts) or ", ".join(sorted(value))[:60]


@click.group()
def tables() -> None:
    """Inspect the tables (predictions, card_activity, explanations) from their
    changelogs: the same answer while the workers run and after they stopped."""


@tables.command("list")
@click.option("--json", "as_json", is_flag=True, help="JSON instead of a table.")
def list_(as_json: bool) -> None:
    """The tables, the role that writes each, and its changelog topic."""
    from app.ops.table_scan import TABLES

    settings = _settings()
    rows = [
        {"table": s.name, "role": s.role, "changelog": s.changelog(settings), "holds": s.help}
        for s in TABLES.values()
    ]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    for row in rows:
        click.echo(f"{row['table']:<18} {row['role']:<10} {row['changelog']:<45} {row['holds']}")


@tables.command()
@click.argument("table")
@click.argument("key")
def get(table: str, key: str) -> None:
    """The value of KEY in TABLE, as JSON (exit code 1 if there is none)."""
    _, snapshot = _snapshot(table)
    if key not in snapshot.rows:
        raise click.ClickException(f"no key {key!r} in {table}")
    click.echo(json.dumps(snapshot.rows[key], indent=2, sort_keys=True))


@tables.command()
@click.argument("table")
@click.option("--status", type=click.Choice(["pending", "calculating", "complete", "failed", "sampled_out"]))
@click.option("--priority", type=click.Choice(["high", "normal", "low"]))
@click.option(
    "--since", default=None, help="ISO time (UTC if no zone) or a duration back from now: 90s, 15m, 2h."
)
@click.option("--limit", default=20, show_default=True, type=click.IntRange(min=1))
@click.option("--kind", type=click.Choice(KINDS), help="explanations: rows of this kind only.")
@click.option("--json", "as_json", is_flag=True, help="A JSON array of {key, value} instead of a table.")
def scan(
    table: str,
    status: str | None,
    priority: str | None,
    since: str | None,
    limit: int,
    kind: str | None,
    as_json: bool,
) -> None:
    """Rows of TABLE, newest first, filtered by status, priority and time."""
    from app.ops.table_scan import scan as do_scan
    from app.ops.table_scan import since_epoch

    try:
        since_at = since_epoch(since) if since is not None else None
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--since") from None
    spec, snapshot = _snapshot(table)
    rows = do_scan(snapshot, spec, status, priority, since_at, limit, kind)
    if as_json:
        click.echo(json.dumps(rows))
        return
    if not rows:
        click.echo(f"no rows in {table} match")
    for row in rows:
        click.echo(f"{row['key']:<28} {_summary(row['value'])}")


@tables.command()
@click.argument("table", required=False)
@click.option("--json", "as_json", is_flag=True, help="JSON instead of text.")
def stats(table: str | None, as_json: bool) -> None:
    """Keys per table and per partition; status counts, cache size and hit rate for explanations."""
    from app.ops.table_scan import TABLES
    from app.ops.table_scan import stats as do_stats

    names = [table] if table else list(TABLES)
    out = []
    for name in names:
        spec, snapshot = _snapshot(name)
        out.append(do_stats(snapshot, spec))
    if as_json:
        click.echo(json.dumps(out, indent=2))
        return
    for item in out:
        extra = {
            k: v for k, v in item.items() if k not in ("table", "keys", "partitions", "keys_per_partition")
        }
        per = " ".join(f"{p}:{n}" for p, n in item["keys_per_partition"].items())
        click.echo(f"{item['table']:<18} keys {item['keys']:>8,}  per partition [{per}]")
        for key, value in extra.items():
            if value not in (None, 0, {}):
                click.echo(f"{'':<18} {key}: {value}")
