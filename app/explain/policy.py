"""Which queue a verdict's explanation goes to: the priority rules and low-priority sampling.

Pure functions of the verdict, so a verdict replayed after a crash is routed exactly as the
first time (sampling hashes the transaction id instead of drawing a random number).
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PriorityRules:
    """Defaults: deny or review, or amount ≥ 1,000 → high; amount ≥ 100 → normal; else low."""

    high_decisions: frozenset[str] = frozenset({"deny", "review"})
    high_min_amount: float = 1000.0
    normal_min_amount: float = 100.0
    low_sample_rate: float = 1.0
    # The counterfactual kind: which decisions get one by themselves, and its queue (issue 20).
    counterfactual_decisions: frozenset[str] = frozenset()
    counterfactual_priority: str = "high"

    def __post_init__(self) -> None:
        if not 0.0 <= self.low_sample_rate <= 1.0:
            raise ValueError(f"low_sample_rate must be within [0, 1], got {self.low_sample_rate}")

    @classmethod
    def from_settings(cls, settings: Any) -> PriorityRules:
        return cls(
            high_decisions=frozenset(settings.explain_high_decisions),
            high_min_amount=settings.explain_high_min_amount,
            normal_min_amount=settings.explain_normal_min_amount,
            low_sample_rate=settings.explain_low_sample_rate,
            counterfactual_decisions=frozenset(settings.explain_counterfactual_decisions),
            counterfactual_priority=settings.explain_counterfactual_priority,
        )

    def priority(self, verdict: Mapping[str, Any]) -> str:
        """high, normal or low for one verdict."""
        amount = float(verdict["amount"])
        if verdict["decision"] in self.high_decisions or amount >= self.high_min_amount:
            return "high"
        if amount >= self.normal_min_amount:
            return "normal"
        return "low"

    def counterfactual(self, verdict: Mapping[str, Any]) -> str | None:
        """The queue of the verdict's counterfactual, or None: not by itself (on demand only)."""
        if verdict["decision"] in self.counterfactual_decisions:
            return self.counterfactual_priority
        return None

    def sampled(self, priority: str, transaction_id: str) -> bool:
        """Whether the explanation is computed now (only low priority is ever sampled out)."""
        return priority != "low" or sample_point(transaction_id) < self.low_sample_rate


def sample_point(transaction_id: str) -> float:
    """A stable pseudo-random point in [0, 1) for a transaction id."""
    digest = hashlib.blake2b(transaction_id.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2.0**64
