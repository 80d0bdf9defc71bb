"""``fraudlens generate`` and ``fraudlens train``."""

from __future__ import annotations

import sys
from pathlib import Path

import orjson


def print_generated(count: int, seed: int, labels: bool) -> None:
    from app.model.generator import generate

    out = sys.stdout.buffer
    for item in generate(count, seed):
        record = dict(item.transaction)
        if labels:
            record.update(is_fraud=item.is_fraud, pattern=item.pattern)
        out.write(orjson.dumps(record) + b"\n")
    out.flush()


def run_training(rows: int, seed: int, data: Path | None, label: str | None) -> None:
    from app.model.training import train
    from app.settings import get_settings

    registered = train(
        rows=rows, seed=seed, data=data, label=label, registry_dir=get_settings().models_dir, progress=True
    )
    print(f"registered model {registered.version} in {get_settings().models_dir}")
