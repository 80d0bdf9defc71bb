"""Explanation rows: dedup of verdicts and requests, transitions, updates valid against the schema;
one SHAP batch with cache hits and failures (pure; a trained model, no broker)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from app.explain import ExplainerCache, FailureCode, explain_request
from app.explain.core import Explainer
from app.explain.messages import features_matrix
from app.explain.state import (
    SAMPLED_OUT,
    RouteAction,
    WorkAction,
    calculating,
    failed,
    finished,
    from_record,
    new_row,
    on_demand_wanted,
    requested_row,
    route_action,
    to_record,
    update_message,
    work_action,
)
from app.explain.work import ExplanationMemo, compute, prepare
from app.model.features import build_matrix
from app.model.generator import generate_transactions
from app.model.registry import Registry
from app.records.contracts import validate_message

T0, T1, T2, T3 = (f"2026-11-28T12:00:0{i}.000000Z" for i in range(4))


@pytest.fixture(scope="module")
def verdicts(models_dir: Path) -> list[dict[str, Any]]:
    """Verdict-shaped dicts for generator traffic, scored by the registered model."""
    from app.model.predictor import ModelScorer

    history = list(generate_transactions(3000, seed=31))  # warm card histories, last 50 used
    transactions = history[-50:]
    scorer = ModelScorer(models_dir)
    matrix = build_matrix(history)[0][-50:]
    raw, prob = scorer.predict(matrix)
    return [
        {
            "transaction_id": tx["transaction_id"], "card_id": tx["card_id"],
            "decision": scorer.decide(p)[0], "score": float(p), "raw_score": float(r),
            "model_version": scorer.version, "amount": tx["amount"], "event_time": tx["timestamp"],
            "scored_at": T0, "features": dict(zip(scorer.feature_names, row.tolist(), strict=True)),
        }
        for tx, row, r, p in zip(transactions, matrix, raw, prob, strict=True)
    ]  # fmt: skip


def request_of(verdict: dict[str, Any], priority: str = "low") -> dict[str, Any]:
    return explain_request(verdict, priority, T1, method="tree")


def test_router_dedup(verdicts: list[dict[str, Any]]) -> None:
    request = request_of(verdicts[0])
    version = request["model_version"]
    assert route_action(None, version, "verdicts:0:5") is RouteAction.NEW
    pending = new_row(request, "pending", "verdicts:0:5")
    assert route_action(pending, version, "verdicts:0:5") is RouteAction.RESEND  # crash replay
    assert route_action(pending, version, "verdicts:0:9") is RouteAction.SKIP  # re-sent verdict
    # A replay of the verdict that wrote the row: whatever it left undone is done again.
    replayed = {"calculating": RouteAction.REQUEUE, "complete": RouteAction.ANNOUNCE,
                "failed": RouteAction.ANNOUNCE, SAMPLED_OUT: RouteAction.SKIP}  # fmt: skip
    for status, action in replayed.items():
        assert route_action({**pending, "status": status}, version, "verdicts:0:5") is action, status
        assert route_action({**pending, "status": status}, version, "verdicts:0:9") is RouteAction.SKIP
    assert route_action(pending, "0123456789ab", "verdicts:0:9") is RouteAction.NEW  # other model


def test_on_demand_dedup(verdicts: list[dict[str, Any]]) -> None:
    row = new_row(request_of(verdicts[0]), SAMPLED_OUT, "verdicts:0:1")
    assert on_demand_wanted(row, "tree")
    assert not on_demand_wanted({**row, "status": "pending"}, "tree")
    assert not on_demand_wanted({**row, "status": "complete"}, "tree")
    assert on_demand_wanted({**row, "status": "complete"}, "interventional")
    assert on_demand_wanted({**row, "status": "failed"}, "tree")


def test_worker_dedup_and_attempts(verdicts: list[dict[str, Any]]) -> None:
    request = request_of(verdicts[0])
    assert work_action(None, request, 3) is WorkAction.COMPUTE
    row = calculating(new_row(request, "pending", "verdicts:0:1"), request, T2)
    assert row["attempts"] == 1 and row["status"] == "calculating"
    assert work_action(row, request, 3) is WorkAction.COMPUTE  # left calculating by a crash
    row = calculating(calculating(row, request, T2), request, T2)
    assert row["attempts"] == 3 and work_action(row, request, 3) is WorkAction.EXHAUSTED
    done = {**row, "status": "complete"}
    # finished: nothing computed, the final update announced again (a replay after a stop
    # between the row's ack and the update's ack; found by the fault suite's rebalance scenario)
    assert work_action(done, request, 3) is WorkAction.ANNOUNCE
    assert work_action(done, {**request, "method": "interventional"}, 3) is WorkAction.COMPUTE


def _lifecycle(models_dir: Path, request: dict[str, Any], source: str, cached: bool) -> tuple[Any, ...]:
    """One row through every status: pending, calculating, complete and failed (and the
    explanation computed for it)."""
    pending = new_row(request, "pending", source)
    started = calculating(pending, request, T2)
    explanation = (
        ExplainerCache(models_dir)
        .get(request["model_version"])
        .explain_batch(np.array([list(request["features"].values())]))[0]
    )
    complete = finished(started, explanation, cached, T3)
    gave_up = failed(started, FailureCode.ATTEMPTS_EXHAUSTED, "started 3 times", T3)
    return pending, started, complete, gave_up, explanation


def test_every_status_update_validates(models_dir: Path, verdicts: list[dict[str, Any]]) -> None:
    pending, started, complete, gave_up, explanation = _lifecycle(
        models_dir, request_of(verdicts[0], "high"), "verdicts:0:1", cached=False
    )
    for row, updated in ((pending, T1), (started, T2), (complete, T3), (gave_up, T3)):
        message = update_message(row, updated)
        validate_message("explanation", message)
        assert message["status"] == row["status"]
    assert update_message(complete, T3)["timings"]["verdict_to_complete_ms"] == 3000.0
    assert update_message(complete, T3)["contributions"] == explanation.contributions


def test_a_row_is_its_update_record_and_back(models_dir: Path, verdicts: list[dict[str, Any]]) -> None:
    """The ``explanations`` table stores each row as its ``explanation.updates`` record (the
    table's changelog is that topic): the record is the update a reader expects, valid against
    the schema, with the row's source and request; reading it back gives the row, so dedup,
    replays and re-queues work from a store recovered from the topic alone."""
    request = request_of(verdicts[1], "normal")
    pending, started, complete, gave_up, _ = _lifecycle(models_dir, request, "verdicts:3:7", cached=True)
    for row, updated in ((pending, T1), (started, T2), (complete, T3), (gave_up, T3)):
        record = to_record(row)
        validate_message("explanation", record)
        assert {k: v for k, v in record.items() if k not in ("source", "request")} == update_message(
            row, updated
        )
        assert record["source"] == "verdicts:3:7" and record["request"] == request
        assert from_record(record) == row, row["status"]
        assert to_record(from_record(record) or {}) == record  # the same bytes when re-announced
    assert (
        route_action(from_record(to_record(pending)), request["model_version"], "verdicts:3:7")
        is RouteAction.RESEND
    )
    assert work_action(from_record(to_record(complete)), request, 3) is WorkAction.ANNOUNCE
    with pytest.raises(ValueError):
        to_record(new_row(request, SAMPLED_OUT, "verdicts:3:8"))  # never published


@pytest.mark.parametrize(
    "stranger",
    [None, [], "x", {"status": "complete"}, {"status": "bogus", "request": {}, "timings": {}}],
)
def test_a_record_no_explainer_wrote_is_no_row(stranger: Any) -> None:
    """``explanation.updates`` is readable and writable by others: their records are no rows."""
    example = {
        "transaction_id": "t", "status": "pending", "priority": "low", "model_version": "a" * 12,
        "method": "tree", "updated_at": T1, "timings": {"verdict_at": T0, "queued_at": T1},
    }  # fmt: skip
    assert from_record(stranger) is None
    assert from_record(example) is None  # a valid update, but without the explainer's request


def test_batch_with_cache_hits_and_failures(models_dir: Path, verdicts: list[dict[str, Any]]) -> None:
    explainers = ExplainerCache(models_dir)
    requests = [request_of(v) for v in verdicts[:20]]
    twin = {**requests[3], "transaction_id": "tx-twin"}  # same features: same signature
    unknown = {**requests[0], "model_version": "0123456789ab"}
    broken = {**requests[1], "features": {"amount": 1.0}}
    batch = [*requests, twin, unknown, broken]
    prepared = prepare(explainers, batch, "tree")
    assert prepared[20].cache_key == prepared[3].cache_key
    first = compute(prepared, [None] * len(batch))
    memo = ExplanationMemo(100)
    for item, outcome in zip(prepared, first, strict=True):
        if item.cache_key and outcome.explanation is not None:
            memo.put(item.cache_key, outcome.explanation)
    assert [o.failure[0] for o in first[21:] if o.failure] == [
        FailureCode.UNKNOWN_MODEL_VERSION,
        FailureCode.INVALID_REQUEST,
    ]
    assert all(o.explanation is not None and o.explanation.ok for o in first[:21])
    again = compute(prepared, [memo.get(i.cache_key) if i.cache_key else None for i in prepared])
    for fresh, hit in zip(first[:21], again[:21], strict=True):
        assert hit.cache_hit and hit.explanation is not None and fresh.explanation is not None
        assert hit.explanation.contributions == fresh.explanation.contributions
        assert hit.explanation.raw_score == fresh.explanation.raw_score
    assert Registry(models_dir).current() in explainers.loaded()


def test_a_batch_is_signed_in_one_call_per_model_version(
    models_dir: Path, verdicts: list[dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each cache key is its row's own signature, from one ``signatures`` call for the batch."""
    explainers = ExplainerCache(models_dir)
    requests = [request_of(v) for v in verdicts[:12]]
    unknown = {**requests[0], "model_version": "0123456789ab"}
    broken = {**requests[1], "features": {"amount": 1.0}}
    explainer = explainers.get(requests[0]["model_version"])
    alone = [
        explainer.signatures(features_matrix([r["features"]], explainer.feature_names))[0].cache_key("tree")
        for r in requests
    ]
    calls: list[int] = []
    signatures = Explainer.signatures

    def counted(self: Explainer, matrix: np.ndarray) -> Any:
        calls.append(len(matrix))
        return signatures(self, matrix)

    monkeypatch.setattr(Explainer, "signatures", counted)
    prepared = prepare(explainers, [requests[0], unknown, *requests[1:], broken], "tree")
    assert [item.cache_key for item in prepared] == [alone[0], None, *alone[1:], None]
    assert len(set(alone)) > 1 and calls == [12]


def test_one_hand_off_prepares_looks_up_the_memo_and_computes(
    models_dir: Path, verdicts: list[dict[str, Any]]
) -> None:
    """The worker's thread call: a second batch of the same rows is all memo hits."""
    from app.explainer.workers import _explain_on_thread

    explainers, memo = ExplainerCache(models_dir), ExplanationMemo(100)
    requests = [request_of(v) for v in verdicts[:10]]
    unknown = {**requests[0], "model_version": "0123456789ab"}
    first = _explain_on_thread(explainers, memo, [*requests, unknown], "tree")
    assert first.misses == 11 and first.cpu_s >= 0.0
    assert [o.cache_hit for o in first.outcomes] == [False] * 11
    for item, outcome in zip(first.prepared[:10], first.outcomes[:10], strict=True):
        assert item.cache_key is not None and outcome.explanation is not None
        memo.put(item.cache_key, outcome.explanation)
    again = _explain_on_thread(explainers, memo, [*requests, unknown], "tree")
    assert again.misses == 1 and [o.cache_hit for o in again.outcomes] == [True] * 10 + [False]
    assert [o.explanation for o in again.outcomes[:10]] == [o.explanation for o in first.outcomes[:10]]
    assert again.outcomes[10].failure is not None


def test_memo_is_bounded() -> None:
    memo = ExplanationMemo(2)
    for key in "abc":
        memo.put(key, object())  # type: ignore[arg-type]
    assert len(memo) == 2 and memo.get("a") is None and memo.get("c") is not None


def test_a_request_before_its_verdict_leaves_a_placeholder_the_verdict_routes(
    verdicts: list[dict[str, Any]],
) -> None:
    placeholder = requested_row(verdicts[0]["transaction_id"], "interventional", "explain.requests/0@3", T0)
    assert placeholder["status"] == "requested" and placeholder["model_version"] is None
    assert route_action(placeholder, verdicts[0]["model_version"], "verdicts/0@9") is RouteAction.NEW
    request = explain_request(verdicts[0], "high", T1, on_demand=True, method="interventional")
    assert work_action(placeholder, request, 3) is WorkAction.COMPUTE
