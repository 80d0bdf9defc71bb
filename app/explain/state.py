"""The ``explanations`` row of one transaction and kind, and its transitions, as plain dicts.

Each kind (``contributions``, ``counterfactual``: issue 20) has a row of its own under its own
key (``row_key``), so statuses, attempts, dedup and replays below hold per kind.

Statuses: ``pending → calculating → complete | failed`` (published on ``explanation.updates``),
plus two table-only statuses, never published: ``sampled_out``, a low-priority verdict left out
by sampling, kept (with its request) so an on-demand request can still explain it; and
``requested``, an on-demand request that reached the router before the transaction's verdict
(the router reads ``verdicts`` and ``explain.requests`` independently): the verdict, when it
comes, is routed at high priority with the requested method instead of by the usual rules.

Who writes what: the router creates rows (absent → pending | sampled_out) and re-queues them
on demand; the worker moves pending → calculating → complete | failed. Both run on the same
event loop of the worker that owns the transaction's partition, so their writes never interleave.

Where rows live: a published status's row is stored as its ``explanation.updates`` record
(``to_record``; the ``explanations`` table's changelog *is* that topic, so one record is both the
table write and the update), with the two fields the explainer needs beyond the update:
``source`` and ``request``. ``from_record`` turns it back into a row. The table-only statuses
live in the ``explanation_waiting`` table (never published).
"""

from __future__ import annotations

from collections.abc import Mapping
from enum import StrEnum
from typing import Any

from app.explain.core import Explanation
from app.explain.messages import (
    FailureCode,
    explanation_update,
    timings,
)
from app.records.kinds import COUNTERFACTUAL, SPLIT_SEARCH, kind_of

SAMPLED_OUT = "sampled_out"
REQUESTED = "requested"
UNPUBLISHED = frozenset({SAMPLED_OUT, REQUESTED})  # rows of the explanation_waiting table
IN_FLIGHT = frozenset({"pending", "calculating"})
TERMINAL = frozenset({"complete", "failed"})

Row = dict[str, Any]


class RouteAction(StrEnum):
    NEW = "new"  # no row for this model version: route it
    # The very message that wrote the row, replayed after a stop (its event was not acked: a
    # request handed straight to the workers is acked only once its explanation is final).
    RESEND = "resend"  # row pending: written again (its update may be what the stop lost), queued
    REQUEUE = "requeue"  # row calculating: queued again (the worker counts the attempt)
    ANNOUNCE = "announce"  # row finished: written again, byte for byte (same reason as RESEND)
    SKIP = "skip"  # already pending, calculating, finished or sampled out: no second computation


class WorkAction(StrEnum):
    COMPUTE = "compute"
    # Already finished for this model version and method: compute nothing, but write the final
    # row again (its record is the final update). Only a replayed request record gets here (the
    # router drops re-sent verdicts and on-demand requests for finished rows): the local store
    # may hold a final row whose record a SIGKILL lost, which would leave the transaction
    # "calculating" for every reader of explanation.updates. The record is byte-identical (its
    # time is the row's completed_at).
    ANNOUNCE = "announce"
    EXHAUSTED = "exhausted"  # started max_attempts times without finishing (crashes each time?)


def method_of(request: Mapping[str, Any], default: str) -> str:
    """The method a request is computed with: a counterfactual's is the split search; a
    contributions request names its SHAP method or takes the worker's ``default``."""
    if kind_of(request) == COUNTERFACTUAL:
        return SPLIT_SEARCH
    return str(request.get("method") or default)


def new_row(request: Mapping[str, Any], status: str, source: str) -> Row:
    """The row for a freshly routed request; ``source`` names the message that created it."""
    return {
        "transaction_id": request["transaction_id"],
        "kind": kind_of(request),
        "status": status,
        "priority": request["priority"],
        "model_version": request["model_version"],
        "method": SPLIT_SEARCH if kind_of(request) == COUNTERFACTUAL else request["method"],
        "attempts": 0,
        "source": source,
        "request": dict(request),
        "explanation": None,
        "cache_hit": None,
        "reason_code": None,
        "reason": None,
        "counterfactual": None,
        "timings": timings(request["verdict_at"], request["queued_at"]),
    }


def requested_row(transaction_id: str, method: str, source: str, requested_at: str) -> Row:
    """The placeholder for an on-demand request that came before its verdict (no model yet)."""
    return {
        "transaction_id": transaction_id,
        "status": REQUESTED,
        "priority": "high",
        "model_version": None,
        "method": method,
        "attempts": 0,
        "source": source,
        "request": None,
        "explanation": None,
        "cache_hit": None,
        "reason_code": None,
        "reason": None,
        "timings": {"requested_at": requested_at},
    }


def route_action(row: Mapping[str, Any] | None, model_version: str, source: str) -> RouteAction:
    """What the router does with a verdict, given the transaction's row (dedup).

    A ``requested`` placeholder has no model version, so its verdict is routed (``NEW``).
    """
    if row is None or row["model_version"] != model_version:
        return RouteAction.NEW
    return replay_action(row, source) or RouteAction.SKIP


def replay_action(row: Mapping[str, Any], source: str) -> RouteAction | None:
    """What a replay of the message that wrote ``row`` needs (None: this is not that message,
    or its row is one never published: nothing was left undone)."""
    if row["source"] != source:
        return None
    if row["status"] == "pending":
        return RouteAction.RESEND
    if row["status"] == "calculating":
        return RouteAction.REQUEUE
    if row["status"] in TERMINAL:
        return RouteAction.ANNOUNCE
    return None


def on_demand_wanted(row: Mapping[str, Any], method: str) -> bool:
    """An on-demand request computes unless this method is in flight or done already."""
    if row["method"] != method:
        return True
    return row["status"] not in IN_FLIGHT and row["status"] != "complete"


def work_action(row: Mapping[str, Any] | None, request: Mapping[str, Any], max_attempts: int) -> WorkAction:
    """What a worker does with a request, given the transaction's row."""
    if row is None or row["model_version"] != request["model_version"]:
        return WorkAction.COMPUTE
    if row["status"] in TERMINAL and row["method"] == request["method"]:
        return WorkAction.ANNOUNCE
    if row["status"] == "calculating" and row["attempts"] >= max_attempts:
        return WorkAction.EXHAUSTED
    return WorkAction.COMPUTE


def calculating(row: Mapping[str, Any] | None, request: Mapping[str, Any], started_at: str) -> Row:
    """The row once a worker starts on it (a missing row is rebuilt from the request)."""
    base = dict(row) if row is not None and row["model_version"] == request["model_version"] else None
    out = base or new_row(request, "pending", "worker")
    out["status"] = "calculating"
    out["method"] = request["method"]
    out["attempts"] = int(out["attempts"]) + 1
    out["timings"] = timings(out["timings"]["verdict_at"], out["timings"]["queued_at"], started_at)
    return out


def finished(
    row: Mapping[str, Any],
    explanation: Explanation,
    cache_hit: bool,
    completed_at: str,
    similar_cases: Mapping[str, Any] | None = None,
) -> Row:
    """complete (with its similar cases, when looked up), or failed when the explanation did
    not pass its additivity check."""
    out = dict(row)
    out["explanation"] = explanation.to_dict()
    if similar_cases is not None:
        out["similar_cases"] = dict(similar_cases)
    out["cache_hit"] = cache_hit
    out["timings"] = _completed_timings(row, completed_at)
    if explanation.ok:
        out["status"], out["reason_code"], out["reason"] = "complete", None, None
    else:
        out["status"] = "failed"
        out["reason_code"], out["reason"] = str(FailureCode.ADDITIVITY_VIOLATION), explanation.failure
    return out


def found(row: Mapping[str, Any], counterfactual: Mapping[str, Any], completed_at: str) -> Row:
    """A counterfactual row, complete: its result (``Counterfactual.to_dict``). "No proposal" is
    an answer too (the result's note), never a failure."""
    out = dict(row)
    out["counterfactual"] = dict(counterfactual)
    out["cache_hit"] = False
    out["timings"] = _completed_timings(row, completed_at)
    out["status"], out["reason_code"], out["reason"] = "complete", None, None
    return out


def failed(row: Mapping[str, Any], code: FailureCode, reason: str, completed_at: str) -> Row:
    out = dict(row)
    out["status"], out["reason_code"], out["reason"] = "failed", str(code), reason
    out["timings"] = _completed_timings(row, completed_at)
    return out


def _completed_timings(row: Mapping[str, Any], completed_at: str) -> dict[str, Any]:
    known = row["timings"]
    return timings(known["verdict_at"], known["queued_at"], known.get("started_at"), completed_at)


def update_message(row: Mapping[str, Any], updated_at: str) -> dict[str, Any]:
    """The ``explanation.updates`` message announcing the row's current status."""
    status = row["status"]
    explanation = None
    if row["explanation"] is not None and status in TERMINAL:
        explanation = Explanation.from_dict(
            {**row["explanation"], "model_version": row["model_version"], "method": row["method"]}
        )
    failure = None
    if status == "failed":
        failure = (FailureCode(row["reason_code"]), str(row["reason"]))
    result = row.get("counterfactual") if status == "complete" else None
    return explanation_update(
        row["transaction_id"],
        status,
        row["priority"],
        row["model_version"],
        row["method"],
        updated_at,
        explanation=explanation,
        cache_hit=row["cache_hit"] if explanation is not None or result is not None else None,
        timing=row["timings"],
        attempts=row["attempts"] if status != "pending" else None,
        failure=failure,
        kind=kind_of(row),
        counterfactual=result,
        uncertainty=row["request"].get("uncertainty"),
        similar_cases=row.get("similar_cases") if status == "complete" else None,
    )


def _updated_at(row: Mapping[str, Any]) -> str:
    """When the row's status was reached: queued (pending), started (calculating), completed."""
    moments = row["timings"]
    if row["status"] in TERMINAL:
        return str(moments["completed_at"])
    if row["status"] == "calculating":
        return str(moments["started_at"])
    return str(moments["queued_at"])


def to_record(row: Mapping[str, Any]) -> dict[str, Any]:
    """The ``explanation.updates`` record of a published status, carrying the whole row: the
    update plus ``source`` (the message that wrote the row) and ``request`` (what a re-queue or
    a replay needs). Deterministic: the same row gives the same bytes (a replay re-announces
    byte for byte)."""
    if row["status"] in UNPUBLISHED:
        raise ValueError(f"a {row['status']} row is not published")
    update = update_message(row, _updated_at(row))
    # The uncertainty is the update's own field: its copy in the request is left out (half the
    # bytes it adds) and ``from_record`` puts it back.
    request = {k: v for k, v in row["request"].items() if k != "uncertainty"}
    return {**update, "source": row["source"], "request": request}


_EXPLANATION_FIELDS = (
    "units", "base_value", "raw_score", "contributions", "top_features", "additivity_residual"
)  # fmt: skip


def from_record(record: Any) -> Row | None:
    """The row an ``explanation.updates`` record carries; None for a record no explainer wrote
    (the topic is readable by all and writable by a misconfigured client: such a record is no
    row, and the transaction's next verdict or request writes a real one over it)."""
    if not isinstance(record, dict) or record.get("status") not in TERMINAL | IN_FLIGHT:
        return None
    if not isinstance(record.get("request"), dict) or not isinstance(record.get("timings"), dict):
        return None
    try:
        row: Row = {
            key: record[key] for key in ("transaction_id", "status", "priority", "model_version", "method")
        }
    except KeyError:
        return None
    explanation = None
    if row["status"] in TERMINAL and all(k in record for k in _EXPLANATION_FIELDS):
        explanation = {"model_version": row["model_version"], "method": row["method"]}
        explanation.update((k, record[k]) for k in _EXPLANATION_FIELDS)
    result = record.get("counterfactual") if row["status"] == "complete" else None
    row.update(
        kind=kind_of(record), attempts=int(record.get("attempts") or 0), source=str(record.get("source")),
        request=record["request"],
        explanation=explanation,
        cache_hit=record.get("cache_hit") if explanation is not None or result is not None else None,
        reason_code=record.get("reason_code"), reason=record.get("reason"), timings=record["timings"],
        counterfactual=result if isinstance(result, dict) else None,
    )  # fmt: skip
    if isinstance(record.get("uncertainty"), dict):  # left out of the record's request
        row["request"] = {**row["request"], "uncertainty": record["uncertainty"]}
    similar = record.get("similar_cases")
    if row["status"] == "complete" and isinstance(similar, dict):
        row["similar_cases"] = similar  # read back as written: a replay re-announces the same bytes
    return row
