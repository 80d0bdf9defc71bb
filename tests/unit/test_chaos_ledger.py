"""The fault suite's ledger has an oracle of its own: fed the records of an explainer whose routing
is broken (the product's ``PriorityRules`` patched), it reports lost or misrouted explanations,
where a ledger asking ``PriorityRules`` itself would count them as "sampled out" and pass."""

from __future__ import annotations

import random
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from app.explain import policy as routing
from app.explain.policy import PriorityRules
from tests.chaos.ledger import BAD_KEY_PREFIX, ExpectedRouting, Ledger, assert_clean

SAMPLE_RATE = 0.1
AMOUNTS = (5.0, 60.0, 99.99, 100.0, 250.0, 999.99, 1000.0, 4000.0)


def traffic(count: int = 3000) -> tuple[dict[str, dict[str, Any]], dict[str, list[bytes]]]:
    """Transactions as the load sent them, and the verdicts the scorer gave them."""
    rng = random.Random(17)
    valid, verdicts = {}, {}
    for n in range(count):
        txid = f"tx-{n:06d}-{rng.getrandbits(24):06x}"
        valid[txid] = {"transaction_id": txid, "amount": rng.choice(AMOUNTS)}
        decision = rng.choices(["approve", "review", "deny"], weights=[90, 6, 4])[0]
        verdict = {"transaction_id": txid, "decision": decision, "amount": valid[txid]["amount"],
                   "model_version": "v1"}  # fmt: skip
        verdicts[txid] = [orjson.dumps(verdict)]
    return valid, verdicts


def explainer_updates(verdicts: dict[str, list[bytes]]) -> dict[str, list[dict[str, Any]]]:
    """What the explainer writes: routed by the product's rules (as patched by the test)."""
    rules = PriorityRules(low_sample_rate=SAMPLE_RATE)
    updates: dict[str, list[dict[str, Any]]] = {}
    for txid, values in verdicts.items():
        verdict = orjson.loads(values[0])
        priority = rules.priority(verdict)
        if rules.sampled(priority, txid):
            updates[txid] = [
                {
                    "transaction_id": txid,
                    "status": status,
                    "priority": priority,
                    "model_version": "v1",
                    "contributions": {"amount": 0.5},
                    "base_value": -4.0,
                }
                for status in ("pending", "calculating", "complete")
            ]
    return updates


def ledger_of(valid: dict[str, Any], verdicts: dict[str, list[bytes]]) -> Ledger:
    bad = {f"{BAD_KEY_PREFIX}1": "not_json"}  # one malformed input, in the DLQ with its reason
    dlq = {f"{BAD_KEY_PREFIX}1": [{"reason_code": "not_json", "reason": "not JSON: expected a value"}]}
    load = SimpleNamespace(valid=valid, valid_order=list(valid), bad=bad, not_acked=[])
    tap = SimpleNamespace(verdicts=verdicts, dlq=dlq, updates=explainer_updates(verdicts))
    return Ledger(None, load, tap, SAMPLE_RATE)  # type: ignore[arg-type]


def test_a_correct_explainer_leaves_a_clean_ledger() -> None:
    figures = ledger_of(*traffic()).figures()
    assert_clean(figures, "-")
    counts = figures.counts
    assert counts["sampled_out"] > 0 and set(counts["by_priority"]) == {"high", "normal", "low"}, counts


def _review_is_not_high(self: PriorityRules, verdict: dict[str, Any]) -> str:
    amount = float(verdict["amount"])
    if verdict["decision"] == "deny" or amount >= self.high_min_amount:
        return "high"
    return "normal" if amount >= self.normal_min_amount else "low"


def _normal_from_1000(self: PriorityRules, verdict: dict[str, Any]) -> str:
    amount = float(verdict["amount"])
    if verdict["decision"] in self.high_decisions or amount > self.high_min_amount:
        return "high"
    return "normal" if amount >= self.normal_min_amount else "low"


def _samples_every_priority(self: PriorityRules, priority: str, transaction_id: str) -> bool:
    return routing.sample_point(transaction_id) < self.low_sample_rate


BROKEN: dict[str, tuple[str, Callable[..., Any]]] = {
    "review verdicts routed as normal or low": ("priority", _review_is_not_high),
    "an amount of exactly 1,000 not high": ("priority", _normal_from_1000),
    "normal and high verdicts sampled out too": ("sampled", _samples_every_priority),
}


@pytest.mark.parametrize("bug", sorted(BROKEN))
def test_a_routing_bug_fails_the_ledger(monkeypatch: pytest.MonkeyPatch, bug: str) -> None:
    method, broken = BROKEN[bug]
    monkeypatch.setattr(PriorityRules, method, broken)
    figures = ledger_of(*traffic()).figures()
    with pytest.raises(AssertionError):
        assert_clean(figures, "-")
    flagged = {name for name, items in figures.problems.items() if items}
    assert flagged & {
        "explanations at another priority than the rules give",
        "explanations missing (no update at all)",
        "sampled-out verdicts explained unasked",
    }, flagged


@pytest.mark.parametrize(
    ("decision", "amount", "priority"),
    [("approve", 99.99, "low"), ("approve", 100.0, "normal"), ("approve", 999.99, "normal"),
     ("approve", 1000.0, "high"), ("review", 1.0, "high"), ("deny", 1.0, "high")],
)  # fmt: skip
def test_expected_routing_states_the_documented_rules(decision: str, amount: float, priority: str) -> None:
    assert ExpectedRouting.from_settings(1.0).priority(decision, amount) == priority


def test_expected_sampling_keeps_about_the_rate_of_lows_and_every_other_priority() -> None:
    routing_rules = ExpectedRouting.from_settings(0.3)
    ids = [f"tx-{n}" for n in range(20_000)]
    kept = sum(routing_rules.explained_unasked("low", t) for t in ids) / len(ids)
    assert 0.28 < kept < 0.32
    assert all(routing_rules.explained_unasked(p, t) for p in ("high", "normal") for t in ids[:100])


def test_counterfactuals_are_expected_per_kind_where_the_rules_route_them() -> None:
    """Issue 20: with counterfactuals routed for deny and review, each such verdict (carrying the
    card state) owes a complete counterfactual of its own, a status sequence apart from its
    contributions; one missing or stuck fails the ledger even when the contributions are clean."""
    valid, verdicts = traffic()
    verdicts = {t: [orjson.dumps({**orjson.loads(v[0]), "replay": {}})] for t, v in verdicts.items()}
    flagged = [t for t, v in verdicts.items() if orjson.loads(v[0])["decision"] != "approve"]
    assert len(flagged) > 50

    def ledger(updates: dict[str, list[dict[str, Any]]]) -> Ledger:
        base = ledger_of(valid, verdicts)
        tap = SimpleNamespace(verdicts=verdicts, dlq=base.tap.dlq, updates={**base.tap.updates, **updates})
        return Ledger(None, base.load, tap, SAMPLE_RATE, explain_counterfactual_decisions=("deny", "review"))  # type: ignore[arg-type]

    searched = {
        f"{t}#counterfactual": [
            {"transaction_id": t, "kind": "counterfactual", "status": s, "priority": "high",
             "model_version": "v1", "counterfactual": {"proposals": []}}
            for s in ("pending", "calculating", "complete")
        ]
        for t in flagged
    }  # fmt: skip
    figures = ledger(searched).figures()
    assert_clean(figures, "-")
    assert figures.counts["by_kind"] == {"contributions": figures.counts["auto"] - len(flagged),
                                         "counterfactual": len(flagged)}  # fmt: skip

    missing = ledger({k: v for k, v in searched.items() if not k.startswith(flagged[0])}).figures()
    assert missing.problems["explanations missing (no update at all)"] == [f"{flagged[0]}#counterfactual"]
    stuck = ledger({**searched, f"{flagged[1]}#counterfactual": searched[f"{flagged[1]}#counterfactual"][:2]})
    assert stuck.figures().problems["explanations stuck (pending/calculating)"] == [
        f"{flagged[1]}#counterfactual"
    ]
