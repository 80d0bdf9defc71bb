"""Priority rules and low-priority sampling of the explainer's router (pure, no broker)."""

from __future__ import annotations

import pytest

from app.explain.policy import PriorityRules, sample_point
from app.settings import Settings


def verdict(decision: str = "approve", amount: float = 10.0) -> dict[str, object]:
    return {"decision": decision, "amount": amount}


@pytest.mark.parametrize(
    ("decision", "amount", "expected"),
    [
        ("deny", 1.0, "high"),
        ("review", 1.0, "high"),
        ("approve", 1000.0, "high"),
        ("approve", 999.99, "normal"),
        ("approve", 100.0, "normal"),
        ("approve", 99.99, "low"),
        ("approve", 0.0, "low"),
    ],
)
def test_default_rules(decision: str, amount: float, expected: str) -> None:
    assert PriorityRules().priority(verdict(decision, amount)) == expected


def test_rules_follow_settings() -> None:
    settings = Settings(
        explain_high_decisions=("deny",),
        explain_high_min_amount=500,
        explain_normal_min_amount=50,
        explain_low_sample_rate=0.25,
    )
    rules = PriorityRules.from_settings(settings)
    assert rules.priority(verdict("review", 10)) == "low"
    assert rules.priority(verdict("deny", 10)) == "high"
    assert rules.priority(verdict("approve", 500)) == "high"
    assert rules.priority(verdict("approve", 50)) == "normal"
    assert rules.low_sample_rate == 0.25


def test_only_low_priority_is_sampled_out() -> None:
    rules = PriorityRules(low_sample_rate=0.0)
    assert rules.sampled("high", "tx-1") and rules.sampled("normal", "tx-1")
    assert not rules.sampled("low", "tx-1")
    assert PriorityRules(low_sample_rate=1.0).sampled("low", "tx-1")


def test_sampling_is_stable_and_near_the_rate() -> None:
    """A replayed verdict is sampled as the first time; the share matches the rate."""
    rules = PriorityRules(low_sample_rate=0.3)
    ids = [f"tx-{i:06d}" for i in range(20_000)]
    first = [rules.sampled("low", t) for t in ids]
    assert first == [rules.sampled("low", t) for t in ids]
    assert abs(sum(first) / len(ids) - 0.3) < 0.015
    assert all(0.0 <= sample_point(t) < 1.0 for t in ids[:100])


def test_sample_rate_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError):
        PriorityRules(low_sample_rate=1.5)
