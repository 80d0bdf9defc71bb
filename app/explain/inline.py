"""The synchronous design, for benchmarks only: explain each verdict before it is sent.

``FRAUDLENS_SCORER_INLINE_EXPLAIN=tree|interventional`` makes the scorer call this on every
batch between scoring and sending, with the explainer's own compute path (``prepare`` and
``compute`` of :mod:`app.explain.work`), so the only difference from the async design is the
explanation computed on the critical path. The explanations are computed and dropped (the
verdict schema stays as it is); no cache, as a synchronous scorer has no explainer to share one.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

import orjson

from app.explain.core import ExplainerCache
from app.explain.messages import explain_request
from app.explain.work import compute, prepare
from app.records.contracts import format_utc


class InlineExplainer:
    """Computes the explanation of each verdict of a batch, in the caller's thread."""

    def __init__(self, models_dir: Path, method: str) -> None:
        self.method = method
        self.explainers = ExplainerCache(models_dir)

    def explain(self, verdicts: Sequence[tuple[bytes, bytes]]) -> int:
        """Explain every verdict (txid, verdict JSON); returns how many were explained."""
        if not verdicts:
            return 0
        now = format_utc(datetime.now(UTC))
        requests = [
            explain_request(orjson.loads(value), "high", now, method=self.method) for _, value in verdicts
        ]
        outcomes = compute(prepare(self.explainers, requests, self.method), [None] * len(requests))
        return sum(outcome.explanation is not None for outcome in outcomes)
