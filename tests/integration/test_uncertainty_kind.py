"""Issue 21's kinds end to end on the real broker: scorer and explainer at their defaults
(counterfactuals for deny and review, uncertain verdicts routed high, three similar cases).

The oracle does not call ``app.model.calibration`` nor ``app.model.reference``: it reads the
calibration slice's raw scores and labels from the version's ``calibration.npz`` with numpy,
restates Venn-ABERS from its definition with scikit-learn's isotonic regression (the slice plus
the test score labelled 0, then 1) and counts each label's conformal p-value by hand; the
similar cases are the reference rows of ``reference.npz`` nearest the update's own contributions
by brute-force distances; the priority rule is restated from the settings' defaults."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.isotonic import IsotonicRegression

from app.model.generator import generate_transactions
from app.records.contracts import validate_message
from tests.integration.harness import Stack
from tests.integration.test_counterfactual_kind import by_kind, complete

STATUSES = ["pending", "calculating", "complete"]


class Oracle:
    def __init__(self, models_dir: Path, version: str) -> None:
        with np.load(models_dir / version / "calibration.npz") as stored:
            self.scores, self.labels = np.array(stored["scores"]), np.array(stored["labels"])
        meta = json.loads((models_dir / version / "meta.json").read_text())
        self.boundaries = {name: self.point(float(t)) for name, t in meta["thresholds"].items()}

    def _isotonic(self, score: float, label: int) -> float:
        fit = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip")
        fit.fit(np.r_[self.scores, score], np.r_[self.labels, label].astype(np.float64))
        return float(fit.predict([score])[0])

    def interval(self, score: float) -> tuple[float, float]:
        return self._isotonic(score, 0), self._isotonic(score, 1)

    def point(self, score: float) -> float:
        p0, p1 = self.interval(score)
        return p1 / (1 - p0 + p1)

    def p_value(self, score: float, label: int) -> float:
        own = self.scores[self.labels == label]
        strange = own >= score if label == 0 else (1 - own) >= (1 - score)
        return (int(strange.sum()) + 1) / (len(own) + 1)


class Neighbours:
    """The reference set as stored, searched by brute force."""

    def __init__(self, models_dir: Path, version: str) -> None:
        with np.load(models_dir / version / "reference.npz") as stored:
            self.shap = np.array(stored["shap"], dtype=np.float64)
            self.ids, self.labels = list(stored["transaction_id"]), list(stored["labels"])
        self.names = json.loads((models_dir / version / "meta.json").read_text())["feature_names"]

    def nearest(self, contributions: dict[str, float], k: int = 3) -> list[tuple[str, str]]:
        phi = np.array([contributions[name] for name in self.names])
        distances = np.sqrt(((self.shap - phi) ** 2).sum(axis=1))
        order = np.argsort(distances, kind="stable")[:k]
        return [(str(self.ids[i]), "fraud" if self.labels[i] else "legitimate") for i in order]


def rules_priority(verdict: dict[str, Any], uncertain: bool) -> str:
    """The defaults restated: deny/review, an amount of 1,000 or more, or uncertain → high."""
    if verdict["decision"] in ("deny", "review") or verdict["amount"] >= 1000 or uncertain:
        return "high"
    return "normal" if verdict["amount"] >= 100 else "low"


@pytest.mark.timeout(600)
def test_every_verdict_ends_with_its_kinds_and_an_uncertainty_from_its_model(
    stack: Stack, models_dir: Path
) -> None:
    stack.start_worker("scorer")
    stack.start_worker("explainer")
    transactions = list(generate_transactions(300, seed=43))
    stack.produce_transactions(transactions)
    verdicts_reader = stack.reader("verdicts")
    verdicts_reader.read_until(lambda m: len(m) >= 300, 120, "300 verdicts")
    verdicts = {v["transaction_id"]: v for v in verdicts_reader.values()}
    flagged = {txid for txid, v in verdicts.items() if v["decision"] != "approve"}
    updates = stack.reader("explanation.updates")
    updates.read_until(
        lambda _: complete(updates, "contributions") >= set(verdicts)
        and complete(updates, "counterfactual") >= flagged,
        300, "every kind of every verdict",
    )  # fmt: skip

    (version,) = {v["model_version"] for v in verdicts.values()}
    oracle = Oracle(models_dir, version)
    neighbours = Neighbours(models_dir, version)
    sequences = by_kind(updates)
    # Every kind the policy names, and no other: contributions for all, a counterfactual for the
    # flagged; each in status order, with the model version of its verdict.
    assert set(sequences) == {(t, "contributions") for t in verdicts} | {
        (t, "counterfactual") for t in flagged
    }
    seen: Counter[str] = Counter()
    for (txid, kind), sequence in sequences.items():
        assert [u["status"] for u in sequence] == STATUSES, (txid, kind)
        assert {u["model_version"] for u in sequence} == {version}
        for update in sequence:
            validate_message("explanation", update)
        if kind != "contributions":
            assert all("uncertainty" not in u for u in sequence)
            continue
        similar = sequence[-1]["similar_cases"]  # the complete update carries them
        assert all("similar_cases" not in u for u in sequence[:-1])
        cases = [(c["transaction_id"], c["outcome"]) for c in similar["cases"]]
        assert cases == neighbours.nearest(sequence[-1]["contributions"]), txid
        found = sequence[0]["uncertainty"]  # the pending update carries it already
        assert all(u["uncertainty"] == found for u in sequence), txid
        verdict = verdicts[txid]
        score = float(verdict["score"])
        p0, p1 = oracle.interval(score)
        # Six significant digits in the update.
        assert found["interval"] == pytest.approx([p0, p1], rel=1e-5, abs=1e-12), txid
        assert found["probability"] == pytest.approx(p1 / (1 - p0 + p1), rel=1e-5)
        p_values = {"legitimate": oracle.p_value(score, 0), "fraud": oracle.p_value(score, 1)}
        assert found["p_values"] == pytest.approx(p_values, rel=1e-5), txid
        assert found["prediction_set"] == [name for name, p in p_values.items() if p > 1 - 0.95]
        straddles = [n for n in ("review", "deny") if p0 <= oracle.boundaries[n] <= p1]
        assert (found["straddles"], found["uncertain"]) == (straddles, bool(straddles)), txid
        assert sequence[-1]["priority"] == rules_priority(verdict, bool(straddles)), txid
        seen["uncertain" if straddles else "certain"] += 1
        seen["promoted"] += bool(straddles) and rules_priority(verdict, False) != "high"
    print(f"\n300 verdicts: {dict(seen)}, {len(flagged)} flagged")
    assert seen["uncertain"] >= 1 and seen["certain"] >= 1, seen  # both branches were exercised

    # ``fraudlens explain TXID --kind uncertainty|similar_cases``: the same, as JSON and in words.
    from tests.integration.test_explain_cli import explain

    uncertain = next(
        t for (t, k), seq in sequences.items() if k == "contributions" and seq[0]["uncertainty"]["uncertain"]
    )
    certain = next(
        t
        for (t, k), seq in sequences.items()
        if k == "contributions" and not seq[0]["uncertainty"]["uncertain"]
    )
    for txid in (uncertain, certain):
        stored = sequences[(txid, "contributions")][0]["uncertainty"]
        done = explain(stack, txid, "--kind", "uncertainty", "--json")
        assert done.returncode == 0, done.stderr + done.stdout
        assert json.loads(done.stdout)["uncertainty"] == stored
        text = explain(stack, txid, "--kind", "uncertainty")
        assert text.returncode == 0, text.stderr + text.stdout
        low, high = stored["interval"]
        assert f"interval [{low:.4f}, {high:.4f}]" in text.stdout, text.stdout
        flag = (
            "uncertain: the interval straddles the "
            if txid == uncertain
            else "certain: the interval holds neither"
        )
        assert flag in text.stdout, text.stdout
        fraud_possible = "fraud" in stored["prediction_set"]
        assert ("cannot rule out fraud at 95%" in text.stdout) == fraud_possible, text.stdout
        cases = explain(stack, txid, "--kind", "similar_cases")
        assert cases.returncode == 0, cases.stderr + cases.stdout
        shown = sequences[(txid, "contributions")][-1]["similar_cases"]["cases"]
        lines = cases.stdout.splitlines()[2:]
        assert len(lines) == 3 and all(
            c["transaction_id"] in line for c, line in zip(shown, lines, strict=True)
        )
        assert all(line.strip().startswith(c["outcome"]) for c, line in zip(shown, lines, strict=True))
