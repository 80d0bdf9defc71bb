"""``fraudlens models``: the model registry from the command line.

``promote`` only moves the registry's ``CURRENT`` pointer (an atomic rename); running scorers
notice within ``FRAUDLENS_MODEL_CHECK_INTERVAL_S`` and score the next batch with it, no restart.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

if TYPE_CHECKING:
    from app.model.registry import Registry


def _registry() -> Registry:
    from app.model.registry import Registry  # lightgbm: imported only when a command needs it
    from app.settings import get_settings

    return Registry(get_settings().models_dir)


def _summary(registry: Registry, version: str) -> dict[str, Any]:
    meta = registry.load_meta(version)
    metrics, training = meta.get("metrics", {}), meta.get("training", {})
    return {
        "version": version,
        "current": version == registry.current(),
        "created_at": training.get("created_at"),
        "rows": training.get("rows"),
        "pr_auc": metrics.get("pr_auc"),
        "roc_auc": metrics.get("roc_auc"),
        "thresholds": meta.get("thresholds"),
    }


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


@click.group()
def models() -> None:
    """List, inspect and promote registered model versions."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="One JSON array instead of a table.")
def list_(as_json: bool) -> None:
    """Registered versions, oldest first; * marks the one scorers use (CURRENT)."""
    registry = _registry()
    rows = [_summary(registry, v) for v in registry.versions()]
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo(f"no models registered in {registry.root} (run `fraudlens train`)")
        return
    click.echo(
        f"  {'version':<13} {'created_at':<27} {'rows':>8} {'PR-AUC':>7} {'ROC-AUC':>7}  review / deny"
    )
    for row in rows:
        thresholds = row["thresholds"] or {}
        click.echo(
            f"{'*' if row['current'] else ' '} {row['version']:<13} {_fmt(row['created_at']):<27} "
            f"{_fmt(row['rows']):>8} {_fmt(row['pr_auc']):>7} {_fmt(row['roc_auc']):>7}  "
            f"{_fmt(thresholds.get('review'))} / {_fmt(thresholds.get('deny'))}"
        )


@models.command()
@click.argument("version")
def show(version: str) -> None:
    """Everything registered about VERSION (meta.json), as JSON."""
    from app.model.registry import RegistryError

    registry = _registry()
    try:
        meta = registry.load_meta(version)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from None
    meta["current"] = version == registry.current()
    click.echo(json.dumps(meta, indent=2, sort_keys=True))


@models.command()
@click.argument("version")
@click.option(
    "--data",
    required=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    help="A CSV of your own past transactions: the contract's fields, a label column and, "
    "optionally, fraud_pattern.",
)
@click.option("--label", default="is_fraud", show_default=True, help="The CSV's label column.")
@click.option(
    "--rows", default=20_000, show_default=True, type=click.IntRange(min=1), help="Most recent rows kept."
)
def reference(version: str, data: Path, label: str, rows: int) -> None:
    """Replace VERSION's similar cases with the labelled transactions of a CSV file.

    Running explainers read the new set when they next load VERSION (a restart)."""
    from app.model.registry import RegistryError
    from app.model.training import build_reference

    registry = _registry()
    try:
        summary = build_reference(registry.root, version, data, label, rows)
    except (RegistryError, ValueError, KeyError) as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(
        f"{version}: reference set of {summary['rows']:,} rows ({summary['frauds']} frauds) from {data}"
    )


@models.command()
@click.argument("version")
def promote(version: str) -> None:
    """Make VERSION the one scorers use; running scorers switch within seconds, no restart."""
    from app.model.registry import RegistryError

    registry = _registry()
    previous = registry.current()
    try:
        registry.set_current(version)
    except RegistryError as exc:
        raise click.ClickException(str(exc)) from None
    click.echo(f"CURRENT: {previous or '-'} -> {version}")
