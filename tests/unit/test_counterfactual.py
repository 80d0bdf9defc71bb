"""``app.explain.counterfactual``: every proposal is checked by an oracle that does not call the
search: the card's own transactions replayed through ``build_matrix`` (training's walk, not the
carried state) with the changed transaction last, scored by a ``lightgbm.Booster`` loaded from the
registry's files and the thresholds of its ``meta.json``, restated here."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.explain.core import ExplainerCache
from app.explain.counterfactual import (
    APPROVE,
    NO_PROPOSAL,
    CounterfactualSearch,
    _cents_at_most,
    _largest_with_cents_in,
    amount_rows,
)
from app.explain.splits import Forest, SplitIndex
from app.model.features import apply_transaction, build_matrix, features_for
from app.model.generator import generate_transactions
from app.model.predictor import ModelScorer
from app.model.registry import Registry

ORDER = {"approve": 0, "review": 1, "deny": 2}


class Oracle:
    """The model as files on disk, and the decision rule restated: deny at or above the deny
    threshold, review at or above the review threshold."""

    def __init__(self, models_dir: Path) -> None:
        registry = Registry(models_dir)
        version = registry.current()
        assert version is not None
        meta = json.loads((registry.path(version) / "meta.json").read_text())
        self.booster = lgb.Booster(model_file=str(registry.path(version) / "model.txt"))
        self.review, self.deny = float(meta["thresholds"]["review"]), float(meta["thresholds"]["deny"])

    def probability(self, history: list[dict[str, Any]], tx: dict[str, Any]) -> float:
        matrix, _ = build_matrix([*history, tx])
        return float(self.booster.predict(matrix[-1:])[0])

    def decision(self, history: list[dict[str, Any]], tx: dict[str, Any]) -> str:
        p = self.probability(history, tx)
        return "deny" if p >= self.deny else "review" if p >= self.review else "approve"


@pytest.fixture(scope="module")
def oracle(models_dir: Path) -> Oracle:
    return Oracle(models_dir)


@pytest.fixture(scope="module")
def search(models_dir: Path) -> CounterfactualSearch:
    scorer = ModelScorer(models_dir)
    return CounterfactualSearch(scorer, SplitIndex.from_booster(scorer.booster))


Case = tuple[list[dict[str, Any]], dict[str, Any], dict[str, Any] | None]


def stream(count: int, seed: int) -> Iterator[Case]:
    """(the card's earlier transactions, the transaction, the card state before it)."""
    history: dict[str, list[dict[str, Any]]] = defaultdict(list)
    states: dict[str, Any] = {}
    for tx in generate_transactions(count, seed=seed):
        card = tx["card_id"]
        yield list(history[card]), tx, states.get(card)
        states[card] = apply_transaction(tx, states.get(card))
        history[card].append(tx)


@pytest.fixture(scope="module")
def flagged(oracle: Oracle) -> list[Case]:
    """Generator transactions the model reviews or denies (the oracle's decision)."""
    out = []
    for history, tx, state in stream(6000, seed=11):
        p = float(oracle.booster.predict(np.asarray([features_for(tx, state)]))[0])
        if p >= oracle.review:
            out.append((history, tx, state))
    assert len(out) >= 20, len(out)  # enough verdicts for the claims below to mean something
    return out


def test_every_proposal_gets_the_stated_decision_when_replayed(search: CounterfactualSearch, oracle: Oracle,
                                                              flagged: list[Any]) -> None:  # fmt: skip
    proposals = 0
    for history, tx, state in flagged:
        result = search.search(tx, state)
        assert result.decision == oracle.decision(history, tx)
        assert len(result.proposals) <= 3
        for proposal in result.proposals:
            changed = {**tx, **proposal.changes}
            assert oracle.decision(history, changed) == proposal.decision, (tx, proposal)
            assert ORDER[proposal.decision] < ORDER[result.decision]
            assert 1 <= len(proposal.changes) <= 2
            assert set(proposal.changes) <= {"amount", "channel", "device_id", "country"}
            if "amount" in proposal.changes:
                assert proposal.changes["amount"] < tx["amount"]
            proposals += 1
        if not any(p.decision == APPROVE for p in result.proposals):
            assert result.note == NO_PROPOSAL
    assert proposals >= len(flagged)  # most verdicts have at least one


def test_an_amount_range_holds_for_other_amounts_in_it(search: CounterfactualSearch, oracle: Oracle,
                                                      flagged: list[Any]) -> None:  # fmt: skip
    """ "At most X" and "between Y and X" are claims about every amount in the range: sampled,
    both ends, round tens and odd cents included."""
    rng = random.Random(5)
    checked = 0
    for history, tx, state in flagged:
        for proposal in search.search(tx, state).proposals:
            if proposal.amount_from is None:
                continue
            top, bottom = round(proposal.changes["amount"] * 100), round(proposal.amount_from * 100)
            assert 1 <= bottom <= top
            tens = [t for t in range(1000 * (bottom // 1000 + 1), top + 1, 1000)][:3]
            samples = {top, bottom, *tens, *(rng.randint(bottom, top) for _ in range(6))}
            for cents in samples:
                changed = {**tx, **proposal.changes, "amount": cents / 100}
                got = oracle.decision(history, changed)
                assert ORDER[got] <= ORDER[proposal.decision], (tx, proposal, cents)
                checked += 1
    assert checked > 0


def test_a_range_is_the_whole_run_of_amounts_below_the_proposal(search: CounterfactualSearch, oracle: Oracle,
                                                                flagged: list[Any]) -> None:  # fmt: skip
    """A range stops only where it must: the cent below its lowest amount gets a worse decision
    (or the range starts at 0.01); a proposal without a range is that amount alone, and the cent
    below it does not get the decision."""
    ends = 0
    for history, tx, state in flagged:
        for proposal in search.search(tx, state).proposals:
            if "amount" not in proposal.changes:
                continue
            top = round(proposal.changes["amount"] * 100)
            bottom = top if proposal.amount_from is None else round(proposal.amount_from * 100)
            if bottom > 1:
                below = oracle.decision(history, {**tx, **proposal.changes, "amount": (bottom - 1) / 100})
                assert ORDER[below] > ORDER[proposal.decision], (tx, proposal, below)
                ends += 1
    assert ends > 0


def test_only_the_thresholds_a_transaction_can_reach_make_its_cells(models_dir: Path, oracle: Oracle,
                                                                    flagged: list[Any]) -> None:  # fmt: skip
    """``Forest.reachable``, against LightGBM's own routing: for random amounts of flagged
    transactions, every amount-feature node on the path the booster takes (``pred_leaf``) is one
    the search counted as reachable with the transaction's other features fixed."""
    paths = _leaf_paths(oracle.booster.dump_model())
    search = CounterfactualSearch(ModelScorer(models_dir), SplitIndex.from_booster(oracle.booster))
    names = list(oracle.booster.feature_name())
    moved = {
        names.index(n)
        for n in ("amount", "log_amount", "amount_to_median", "amount_cents", "is_round_amount")
    }
    rng = random.Random(8)
    checked = 0
    for _, tx, state in flagged[:25]:
        base = np.asarray(features_for(tx, state))
        median = float(np.median(state["am"])) if state and state["am"] else 0.0
        reachable = search._reachable_thresholds(base, median)
        amounts = [rng.randint(1, round(tx["amount"] * 100)) for _ in range(40)]
        rows = np.asarray([features_for({**tx, "amount": cents / 100}, state) for cents in amounts])
        leaves = oracle.booster.predict(rows, pred_leaf=True)
        for row in leaves:
            for tree, leaf in enumerate(row):
                for feature, threshold in paths[tree][int(leaf)]:
                    if feature in moved and not (names[feature] == "amount_to_median" and median == 0):
                        assert threshold in set(reachable[names[feature]].tolist()), (tree, names[feature])
                        checked += 1
    assert checked > 1000, checked


def _leaf_paths(dump: dict[str, Any]) -> list[dict[int, list[tuple[int, float]]]]:
    """Per tree: leaf index -> the (feature, threshold) of every split node above it."""
    out = []
    for tree in dump["tree_info"]:
        paths: dict[int, list[tuple[int, float]]] = {}
        stack = [(tree["tree_structure"], [])]
        while stack:
            node, above = stack.pop()
            if "leaf_index" in node or "split_index" not in node:
                paths[int(node.get("leaf_index", 0))] = above
                continue
            here = [*above, (int(node["split_feature"]), float(node["threshold"]))]
            stack += [(node["left_child"], here), (node["right_child"], here)]
        out.append(paths)
    return out


def test_proposals_come_smallest_change_first(search: CounterfactualSearch, flagged: list[Any]) -> None:
    seen_multi = False
    for _, tx, state in flagged:
        proposals = search.search(tx, state).proposals
        approve = [p for p in proposals if p.decision == APPROVE]
        assert list(proposals[: len(approve)]) == approve  # approved before "review instead of deny"
        sizes = [len(p.changes) for p in approve]
        assert sizes == sorted(sizes)
        seen_multi |= any(size == 2 for size in sizes)
        for p in proposals:
            lead = "approved if " if p.decision == APPROVE else "review instead of deny if "
            assert p.text.startswith(lead)
    assert seen_multi  # the two-field path ran


def test_an_approved_transaction_needs_no_proposal(search: CounterfactualSearch, oracle: Oracle) -> None:
    for history, tx, state in stream(200, seed=3):
        if oracle.decision(history, tx) == "approve":
            result = search.search(tx, state)
            assert result.decision == "approve" and result.proposals == ()
            return
    raise AssertionError("no approved transaction in 200")


def test_the_explainer_of_a_version_searches_with_that_version(models_dir: Path, oracle: Oracle,
                                                               flagged: list[Any]) -> None:  # fmt: skip
    """``Explainer.counterfactual`` (what a worker calls, per model version): its proposals get
    their decision from the oracle, and its JSON form survives a round trip whole."""
    explainer = ExplainerCache(models_dir).get()
    with_history = [case for case in flagged if case[0]][:8]  # the card state must matter
    assert with_history
    proposals = 0
    for history, tx, state in with_history:
        result = explainer.counterfactual(tx, state)
        assert result.decision == oracle.decision(history, tx)
        for proposal in result.proposals:
            assert oracle.decision(history, {**tx, **proposal.changes}) == proposal.decision
            proposals += 1
    assert proposals > 0
    as_json = json.loads(json.dumps(result.to_dict()))
    assert as_json["decision"] == result.decision and as_json["note"] == result.note
    assert [p["changes"] for p in as_json["proposals"]] == [dict(p.changes) for p in result.proposals]
    assert [p["text"] for p in as_json["proposals"]] == [p.text for p in result.proposals]


def test_the_fast_amount_rows_equal_the_serving_features() -> None:
    """``amount_rows`` (the search's fast path) against ``features_for`` on the changed transaction."""
    cases = [(tx, state) for _, tx, state in stream(400, seed=9) if state is not None][-50:]

    @settings(max_examples=300, deadline=None)
    @given(case=st.sampled_from(cases), cents=st.integers(1, 5_000_00))
    def check(case: tuple[dict[str, Any], dict[str, Any]], cents: int) -> None:
        tx, state = case
        median = float(np.median(state["am"])) if state["am"] else 0.0
        fast = amount_rows(features_for(tx, state), np.asarray([cents]), median)[0]
        assert fast.tolist() == features_for({**tx, "amount": cents / 100}, state)

    check()


@pytest.mark.parametrize(
    ("hi", "low", "high", "expected"),
    [(1234, 0, 99, 1234), (1234, 40, 99, 1199), (1234, 0, 20, 1220), (1234, 35, 35, 1135), (99, 0, 0, 0)],
)
def test_largest_amount_with_cents_in_a_class(hi: int, low: int, high: int, expected: int) -> None:
    assert _largest_with_cents_in(hi, low, high) == expected


def test_amount_boundaries_and_round_amounts() -> None:
    assert _cents_at_most(412.005) == 41200 and _cents_at_most(412.0) == 41200 and _cents_at_most(0.1) == 10


def test_a_booster_with_categorical_nodes_is_not_followed() -> None:
    """Categorical nodes are not followed: ``reachable`` says so (None) and the search then
    counts every threshold, which is never wrong, only slower."""
    leaf = {"leaf_index": 0, "leaf_value": 1.0}
    node = {"split_index": 0, "split_feature": 0, "threshold": "1||2", "decision_type": "==",
            "default_left": False, "missing_type": "None",
            "left_child": leaf, "right_child": leaf}  # fmt: skip
    forest = Forest.from_dump({"tree_info": [{"tree_structure": node}]})
    assert forest.reachable(np.zeros(2), np.asarray([False, True])) is None
    numeric = {**node, "threshold": 0.5, "decision_type": "<=", "split_feature": 1}
    followed = Forest.from_dump({"tree_info": [{"tree_structure": numeric}]})
    assert followed.reachable(np.zeros(2), np.asarray([False, True])).tolist() == [0]
