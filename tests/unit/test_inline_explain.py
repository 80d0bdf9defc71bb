"""The benchmark-only synchronous design: the scorer's inline explanation hook."""

from __future__ import annotations

import time
from pathlib import Path

import orjson
import pytest
from pydantic import ValidationError

from app.explain.inline import InlineExplainer
from app.model.batch import BatchScorer, Incoming
from app.model.generator import generate_transactions
from app.model.predictor import ModelScorer
from app.settings import Settings
from tests.tables import MemoryTable


def _verdicts(models_dir: Path, count: int) -> list[tuple[bytes, bytes]]:
    scorer = BatchScorer(ModelScorer(models_dir), MemoryTable(), MemoryTable(), 65536, time.time)
    batch = [
        Incoming(tx["card_id"].encode(), orjson.dumps(tx), "transactions", 0, i)
        for i, tx in enumerate(generate_transactions(count, seed=12))
    ]
    return scorer.score(batch).verdicts


@pytest.mark.parametrize("method", ["tree", "interventional"])
def test_every_verdict_of_the_batch_is_explained(models_dir: Path, method: str) -> None:
    verdicts = _verdicts(models_dir, 8)
    assert len(verdicts) == 8
    assert InlineExplainer(models_dir, method).explain(verdicts) == 8
    assert InlineExplainer(models_dir, method).explain([]) == 0


def test_the_setting_is_off_by_default_and_closed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FRAUDLENS_SCORER_INLINE_EXPLAIN", raising=False)
    assert Settings().scorer_inline_explain == "off"
    monkeypatch.setenv("FRAUDLENS_SCORER_INLINE_EXPLAIN", "kernel")
    with pytest.raises(ValidationError):
        Settings()
