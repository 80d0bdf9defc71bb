"""Issue 20's check, shared by the unit and end-to-end tests: a verdict recomputes from what it
carries. The transaction is rebuilt from the verdict alone (its copied fields and
``replay.device_id``), and the model is a ``lightgbm.Booster`` loaded from the registry's files."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightgbm as lgb

from app.model.registry import Registry

COPIED = (
    "transaction_id",
    "card_id",
    "amount",
    "currency",
    "channel",
    "country",
    "card_country",
    "mcc",
    "merchant_id",
)


def transaction_of(verdict: dict[str, Any]) -> dict[str, Any]:
    """The scored transaction's fields the features read, from the verdict only."""
    fields = {name: verdict[name] for name in COPIED}
    return {**fields, "timestamp": verdict["event_time"], "device_id": verdict["replay"]["device_id"]}


def current_booster(models_dir: Path) -> lgb.Booster:
    registry = Registry(models_dir)
    version = registry.current()
    assert version is not None, f"no current model in {models_dir}"
    return lgb.Booster(model_file=str(registry.path(version) / "model.txt"))
