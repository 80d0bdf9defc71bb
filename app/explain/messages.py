"""The messages of the explanation path, as plain dicts matching their JSON Schemas.

``explain_request`` builds an ExplainRequest (``schemas/explain_request.schema.json``, topics
``explain.high|normal|low``) from a verdict; ``explanation_update`` and ``finished_update``
build an ExplanationUpdate (``schemas/explanation.schema.json``, topic
``explanation.updates``).  Times are RFC 3339 UTC strings with microseconds (``format_utc``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from datetime import datetime
from enum import StrEnum
from typing import Any

import numpy as np

from app.explain.core import METHODS, Explanation
from app.records.kinds import CONTRIBUTIONS, COUNTERFACTUAL, KINDS

PRIORITIES: tuple[str, ...] = ("high", "normal", "low")
# The verdict's copies of the transaction's fields that the features read (``timestamp`` is its
# ``event_time``, ``device_id`` its ``replay``'s).
_TRANSACTION_FIELDS = (
    "transaction_id", "card_id", "amount", "currency", "channel", "country", "card_country", "mcc",
    "merchant_id",
)  # fmt: skip
STATUSES: tuple[str, ...] = ("pending", "calculating", "complete", "failed")


class FailureCode(StrEnum):
    """Why an explanation ended ``failed`` (``reason_code`` in the update)."""

    ADDITIVITY_VIOLATION = "additivity_violation"
    UNKNOWN_MODEL_VERSION = "unknown_model_version"
    INCOMPATIBLE_MODEL = "incompatible_model"
    UNSUPPORTED_METHOD = "unsupported_method"
    INVALID_REQUEST = "invalid_request"
    ATTEMPTS_EXHAUSTED = "attempts_exhausted"
    INTERNAL_ERROR = "internal_error"
    # An on-demand counterfactual whose verdict (the card state it carries) cannot be read back.
    VERDICT_UNAVAILABLE = "verdict_unavailable"


def features_matrix(features: Sequence[Mapping[str, float | None]], names: Sequence[str]) -> np.ndarray:
    """Rows in ``names`` order from feature dicts (a verdict's or request's ``features``); null is NaN."""
    matrix = np.empty((len(features), len(names)), dtype=np.float64)
    for i, row in enumerate(features):
        missing = [name for name in names if name not in row]
        if missing:
            raise ValueError(f"row {i}: features {missing[:5]} are missing")
        matrix[i] = [math.nan if row[name] is None else row[name] for name in names]
    return matrix


def explain_request(
    verdict: Mapping[str, Any],
    priority: str,
    queued_at: str,
    *,
    on_demand: bool = False,
    method: str | None = None,
    kind: str = CONTRIBUTIONS,
    uncertainty: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The work item for one verdict and kind; everything a worker needs travels with it.
    A contributions request may carry the verdict's ``uncertainty`` (the router's, issue 21).

    A ``contributions`` request has no ``kind`` field (the same bytes as before kinds existed);
    a ``counterfactual`` one carries the verdict's ``replay`` with the transaction's fields."""
    if priority not in PRIORITIES:
        raise ValueError(f"priority must be one of {PRIORITIES}, got {priority!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    request: dict[str, Any] = {
        "transaction_id": verdict["transaction_id"],
        "card_id": verdict["card_id"],
        "priority": priority,
        "model_version": verdict["model_version"],
        "features": dict(verdict["features"]),
        "raw_score": verdict["raw_score"],
        "score": verdict["score"],
        "decision": verdict["decision"],
        "amount": verdict["amount"],
        "event_time": verdict["event_time"],
        "verdict_at": verdict["scored_at"],
        "queued_at": queued_at,
        "on_demand": on_demand,
    }
    if method is not None:
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}")
        request["method"] = method
    if uncertainty is not None:
        if kind != CONTRIBUTIONS:
            raise ValueError(f"the uncertainty rides with the contributions, not with a {kind}")
        request["uncertainty"] = dict(uncertainty)
    if kind == COUNTERFACTUAL:
        replay = verdict.get("replay")
        if replay is None:
            raise ValueError(
                f"verdict {verdict['transaction_id']} carries no replay: no counterfactual for it"
            )
        transaction = {name: verdict[name] for name in _TRANSACTION_FIELDS}
        transaction.update(timestamp=verdict["event_time"], device_id=replay["device_id"])
        request.update(kind=kind, replay={"transaction": transaction, "card_state": replay["card_state"]})
    return request


def _millis(start: str, end: str) -> float:
    delta = datetime.fromisoformat(end) - datetime.fromisoformat(start)
    return round(delta.total_seconds() * 1000.0, 3)


def timings(
    verdict_at: str, queued_at: str, started_at: str | None = None, completed_at: str | None = None
) -> dict[str, Any]:
    """The timings object: the moments known so far and the durations between them."""
    out: dict[str, Any] = {"verdict_at": verdict_at, "queued_at": queued_at}
    if started_at is not None:
        out["started_at"] = started_at
        out["queue_wait_ms"] = max(0.0, _millis(queued_at, started_at))
    if completed_at is not None:
        out["completed_at"] = completed_at
        out["verdict_to_complete_ms"] = max(0.0, _millis(verdict_at, completed_at))
        if started_at is not None:
            out["compute_ms"] = max(0.0, _millis(started_at, completed_at))
    return out


def explanation_update(
    transaction_id: str,
    status: str,
    priority: str,
    model_version: str,
    method: str,
    updated_at: str,
    *,
    explanation: Explanation | None = None,
    cache_hit: bool | None = None,
    timing: Mapping[str, Any] | None = None,
    attempts: int | None = None,
    failure: tuple[FailureCode, str] | None = None,
    kind: str = CONTRIBUTIONS,
    counterfactual: Mapping[str, Any] | None = None,
    uncertainty: Mapping[str, Any] | None = None,
    similar_cases: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """One status change (contributions': with the verdict's ``uncertainty`` when routed with one,
    and once complete its ``similar_cases`` when looked up);
    ``complete`` needs the result (``explanation`` for contributions,
    ``counterfactual`` for that kind), ``cache_hit`` and ``timing``; ``failed`` needs
    ``failure`` (and may carry the failed explanation's values). A contributions update has no
    ``kind`` field (the same as before kinds existed)."""
    if status not in STATUSES:
        raise ValueError(f"status must be one of {STATUSES}, got {status!r}")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    results = {
        CONTRIBUTIONS: ("explanation", explanation),
        COUNTERFACTUAL: ("counterfactual", counterfactual),
    }
    name, result = results[kind]
    ((other, wrong),) = (v for k, v in results.items() if k != kind)
    if wrong is not None:
        raise ValueError(f"a {kind} update carries no {other}")
    if status == "complete" and (result is None or cache_hit is None or timing is None):
        raise ValueError(f"a complete update needs the {kind} result, cache_hit and timing")
    if status == "failed" and failure is None:
        raise ValueError("a failed update needs a failure code and reason")
    if status in ("pending", "calculating") and result is not None:
        raise ValueError(f"a {status} update carries no {name}")
    update: dict[str, Any] = {
        "transaction_id": transaction_id,
        "status": status,
        "priority": priority,
        "model_version": model_version,
        "method": method,
        "updated_at": updated_at,
    }
    if kind != CONTRIBUTIONS:
        update["kind"] = kind
    if counterfactual is not None:
        update["counterfactual"] = dict(counterfactual)
    if uncertainty is not None:
        if kind != CONTRIBUTIONS:
            raise ValueError(f"a {kind} update carries no uncertainty")
        update["uncertainty"] = dict(uncertainty)
    if similar_cases is not None:
        if kind != CONTRIBUTIONS or status != "complete":
            raise ValueError(
                f"only a complete contributions update carries similar cases, not a {status} {kind}"
            )
        update["similar_cases"] = dict(similar_cases)
    if attempts is not None:
        update["attempts"] = attempts
    if explanation is not None:
        values = explanation.to_dict()
        del values["model_version"], values["method"]  # top-level fields already
        update.update(values)
    if cache_hit is not None:
        update["cache_hit"] = cache_hit
    if timing is not None:
        update["timings"] = dict(timing)
    if failure is not None:
        update["reason_code"], update["reason"] = str(failure[0]), failure[1]
    return update


def finished_update(
    transaction_id: str,
    priority: str,
    explanation: Explanation,
    updated_at: str,
    *,
    cache_hit: bool,
    timing: Mapping[str, Any],
    attempts: int | None = None,
) -> dict[str, Any]:
    """``complete`` when the explanation passed its additivity check, else ``failed`` with the reason."""
    failure = None if explanation.ok else (FailureCode.ADDITIVITY_VIOLATION, str(explanation.failure))
    return explanation_update(
        transaction_id,
        "complete" if failure is None else "failed",
        priority,
        explanation.model_version,
        explanation.method,
        updated_at,
        explanation=explanation,
        cache_hit=cache_hit,
        timing=timing,
        attempts=attempts,
        failure=failure,
    )
