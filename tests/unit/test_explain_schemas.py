"""The ExplainRequest and ExplanationUpdate schemas: well-formed, documented, their examples
valid under the reference validator (jsonschema) and the runtime one (fastjsonschema), and what
``app.explain.messages`` builds validates against them."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import fastjsonschema
import jsonschema
import numpy as np
import pytest
import rfc3339_validator  # noqa: F401  (jsonschema checks date-time only when it imports)

from app.explain import (
    KINDS,
    METHODS,
    PRIORITIES,
    STATUSES,
    FailureCode,
    assemble,
    explain_request,
    explanation_update,
    features_matrix,
    finished_update,
    timings,
)
from app.explain.counterfactual import Counterfactual, Proposal
from app.records import contracts
from app.records.kinds import SPLIT_SEARCH

NAMES = ("explanation", "explain_request")
EXAMPLES = contracts.SCHEMA_DIR / "examples"
T0, T1, T2, T3 = (f"2026-11-28T12:00:00.{ms:06d}Z" for ms in (131002, 134518, 151230, 158911))


def load(name: str) -> dict[str, Any]:
    schema: dict[str, Any] = json.loads((contracts.SCHEMA_DIR / f"{name}.schema.json").read_text("utf-8"))
    return schema


@pytest.fixture(scope="module")
def format_checker() -> Any:
    checker = jsonschema.FormatChecker()
    assert not checker.conforms("2026-11-28T12:00:00", "date-time")
    return checker


def check_both(name: str, message: Any, checker: Any) -> None:
    """Raise unless ``message`` is valid under both validators."""
    jsonschema.Draft202012Validator(load(name), format_checker=checker).validate(message)
    contracts.compile_schema(load(name))(message)


def valid_under_neither(name: str, message: Any, checker: Any) -> bool:
    reference = list(jsonschema.Draft202012Validator(load(name), format_checker=checker).iter_errors(message))
    try:
        contracts.compile_schema(load(name))(message)
    except fastjsonschema.JsonSchemaValueException:
        return bool(reference)
    return False


def example_file(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EXAMPLES / f"{name}.valid.json").read_text("utf-8"))
    return data


@pytest.mark.parametrize("name", NAMES)
def test_schema_is_valid_draft_2020_12_with_metadata(name: str) -> None:
    schema = load(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f"/{name}.schema.json")
    assert schema["title"] and schema["description"] and schema["examples"]
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) <= set(schema["properties"])


def _undocumented(node: Any, path: str) -> list[str]:
    missing: list[str] = []
    if not isinstance(node, dict):
        return missing
    for key, sub in node.get("properties", {}).items():
        if not sub.get("description"):
            missing.append(f"{path}/{key}")
        missing += _undocumented(sub, f"{path}/{key}")
    for key in ("items", "additionalProperties"):
        if isinstance(node.get(key), dict):
            missing += _undocumented(node[key], f"{path}/{key}")
    return missing


@pytest.mark.parametrize("name", NAMES)
def test_every_property_has_a_description(name: str) -> None:
    assert _undocumented(load(name), "") == []


@pytest.mark.parametrize("name", NAMES)
def test_examples_validate_with_both_validators(name: str, format_checker: Any) -> None:
    for example in load(name)["examples"]:
        check_both(name, example, format_checker)
    check_both(name, example_file(name), format_checker)
    assert example_file(name) in load(name)["examples"]


def test_examples_cover_every_status() -> None:
    assert {e["status"] for e in load("explanation")["examples"]} == set(STATUSES)


def test_enums_match_the_code() -> None:
    explanation, request = load("explanation"), load("explain_request")
    assert explanation["properties"]["status"]["enum"] == list(STATUSES)
    assert explanation["properties"]["priority"]["enum"] == list(PRIORITIES)
    assert request["properties"]["priority"]["enum"] == list(PRIORITIES)
    assert explanation["properties"]["method"]["enum"] == [*METHODS, SPLIT_SEARCH]
    assert explanation["properties"]["kind"]["enum"] == list(KINDS)
    assert request["properties"]["method"]["enum"] == list(METHODS)
    assert request["properties"]["kind"]["enum"] == list(KINDS)
    assert explanation["properties"]["reason_code"]["enum"] == [code.value for code in FailureCode]


def _resolved(schema: dict[str, Any], prop: dict[str, Any]) -> dict[str, Any]:
    merged = dict(prop)
    ref = merged.pop("$ref", None)
    if ref:
        merged = {**schema["$defs"][ref.rsplit("/", 1)[1]], **merged}
    return {k: v for k, v in merged.items() if k != "description"}


@pytest.mark.parametrize(
    ("field", "verdict_field"),
    [
        ("transaction_id", "transaction_id"),
        ("card_id", "card_id"),
        ("model_version", "model_version"),
        ("raw_score", "raw_score"),
        ("score", "score"),
        ("decision", "decision"),
        ("amount", "amount"),
        ("event_time", "event_time"),
        ("verdict_at", "scored_at"),
        ("queued_at", "scored_at"),
    ],
)
def test_request_copies_verdict_constraints(field: str, verdict_field: str) -> None:
    request, verdict = load("explain_request"), contracts.load_schema("verdict")
    assert _resolved(request, request["properties"][field]) == _resolved(
        verdict, verdict["properties"][verdict_field]
    )
    features = request["properties"]["features"]
    assert (
        features["additionalProperties"]["type"]
        == verdict["properties"]["features"]["additionalProperties"]["type"]
    )


def _complete() -> dict[str, Any]:
    return example_file("explanation")


@pytest.mark.parametrize(
    "broken",
    [
        lambda m: m.pop("contributions"),
        lambda m: m.pop("cache_hit"),
        lambda m: m["timings"].pop("completed_at"),
        lambda m: m.update(units="probability"),
        lambda m: m.update(reason="should not be here"),
        lambda m: m.update(top_features=m["top_features"] * 2),
        lambda m: m["top_features"][0].pop("reason"),
        lambda m: m.update(status="pending"),  # a pending update carries no values
        lambda m: m.update(status="failed"),  # without reason_code and reason
        lambda m: m.update(status="done"),
        lambda m: m.update(priority="urgent"),
        lambda m: m.update(model_version="v1"),
        lambda m: m["contributions"].update(amount="1.0"),
        lambda m: m.update(updated_at="2026-11-28T12:00:00Z"),
        lambda m: m.update(extra=1),
    ],
)
def test_invalid_updates_fail_everywhere(broken: Any, format_checker: Any) -> None:
    message = _complete()
    broken(message)
    assert valid_under_neither("explanation", message, format_checker)


@pytest.mark.parametrize(
    "broken",
    [
        lambda m: m.pop("features"),
        lambda m: m.pop("on_demand"),
        lambda m: m.update(features={}),
        lambda m: m.update(priority="urgent"),
        lambda m: m.update(method="kernel"),
        lambda m: m.update(queued_at="yesterday"),
        lambda m: m["features"].update(amount="850"),
    ],
)
def test_invalid_requests_fail_everywhere(broken: Any, format_checker: Any) -> None:
    message = example_file("explain_request")
    broken(message)
    assert valid_under_neither("explain_request", message, format_checker)


# ------------------------------------------------------------------ builders
def test_request_built_from_a_verdict_validates(format_checker: Any) -> None:
    verdict = json.loads((EXAMPLES / "verdict.valid.json").read_text("utf-8"))
    request = explain_request(verdict, "low", T1, method="interventional")
    check_both("explain_request", request, format_checker)
    assert request["verdict_at"] == verdict["scored_at"] and request["features"] == verdict["features"]
    assert request["on_demand"] is False and request["method"] == "interventional"
    on_demand = explain_request(verdict, "high", T1, on_demand=True)
    check_both("explain_request", on_demand, format_checker)
    assert "method" not in on_demand
    with pytest.raises(ValueError, match="priority"):
        explain_request(verdict, "urgent", T1)
    with pytest.raises(ValueError, match="method"):
        explain_request(verdict, "high", T1, method="kernel")


def test_a_counterfactual_request_carries_what_the_search_reads(format_checker: Any) -> None:
    """Issue 20: a counterfactual request holds the transaction (rebuilt from the verdict's
    copies, its event time and device) and the card state; a contributions request is the same
    as before kinds existed (no ``kind``, no ``replay``)."""
    verdict = json.loads((EXAMPLES / "verdict.valid.json").read_text("utf-8"))
    request = explain_request(verdict, "high", T1, kind="counterfactual")
    check_both("explain_request", request, format_checker)
    tx = request["replay"]["transaction"]
    assert tx["timestamp"] == verdict["event_time"] and tx["device_id"] == verdict["replay"]["device_id"]
    assert {k: tx[k] for k in ("amount", "channel", "country", "card_country", "merchant_id")} == {
        k: verdict[k] for k in ("amount", "channel", "country", "card_country", "merchant_id")
    }
    assert (
        request["replay"]["card_state"] == verdict["replay"]["card_state"]
        and request["kind"] == "counterfactual"
    )
    plain = explain_request(verdict, "high", T1)
    assert "kind" not in plain and "replay" not in plain
    assert explain_request(verdict, "high", T1, kind="contributions") == plain
    without = dict(request)
    del without["replay"]
    assert valid_under_neither("explain_request", without, format_checker)  # a counterfactual needs it
    assert valid_under_neither("explain_request", {**request, "kind": "uncertainty"}, format_checker)
    old = {k: v for k, v in verdict.items() if k != "replay"}  # a verdict from before issue 20
    with pytest.raises(ValueError, match="no replay"):
        explain_request(old, "high", T1, kind="counterfactual")
    with pytest.raises(ValueError, match="kind"):
        explain_request(verdict, "high", T1, kind="similar")


def _counterfactual() -> dict[str, Any]:
    amount = Proposal(
        {"amount": 412.0}, "approve", 0.002, "approved if the amount were at most 412.00 EUR", 0.01
    )
    words = "approved if made in person instead of online and made on a device this card has used"
    pair = Proposal({"channel": "pos", "device_id": "dev-7f3a"}, "approve", 0.001, words)
    return Counterfactual("deny", 0.4, (amount, pair), 9000).to_dict()


def test_counterfactual_updates_built_by_the_code_validate(format_checker: Any) -> None:
    """Issue 20: each kind's updates validate; a counterfactual's carry ``kind`` and its result,
    never SHAP values; a contributions update is the same as before kinds existed."""
    args = ("tx-1", "high", "3f2a9c1b7e04", SPLIT_SEARCH)
    pending = explanation_update(
        args[0], "pending", *args[1:], T1, timing=timings(T0, T1), kind="counterfactual"
    )
    result = _counterfactual()
    complete = explanation_update(
        args[0], "complete", *args[1:], T3, timing=timings(T0, T1, T2, T3), cache_hit=False,
        kind="counterfactual", counterfactual=result,
    )  # fmt: skip
    for message in (pending, complete):
        check_both("explanation", message, format_checker)
    assert complete["kind"] == "counterfactual" and complete["counterfactual"] == result
    none = Counterfactual("deny", 0.9, (), 9000, note="no change of these fields alone would approve it")
    nothing = {**complete, "counterfactual": none.to_dict()}
    check_both("explanation", nothing, format_checker)  # an answer, not a failure
    shap = explanation_update("tx-1", "pending", "high", "3f2a9c1b7e04", "tree", T1, timing=timings(T0, T1))
    assert "kind" not in shap
    broken = [
        {k: v for k, v in complete.items() if k != "counterfactual"},  # complete without its result
        {**complete, "method": "tree"},  # a SHAP method on a counterfactual
        {**complete, "contributions": {"amount": 1.0}},  # SHAP values on a counterfactual
        {**complete, "kind": "contributions"},  # a counterfactual result on contributions
        {k: v for k, v in complete.items() if k != "kind"},  # absent kind = contributions
        {**pending, "counterfactual": result},  # a result before complete
        {**complete, "counterfactual": {**result, "proposals": result["proposals"] * 2}},  # over three
        {**complete, "counterfactual": {**result, "proposals": [
            {**result["proposals"][0], "changes": {"card_country": "DE"}}]}},  # not an actionable field
    ]  # fmt: skip
    for message in broken:
        assert valid_under_neither("explanation", message, format_checker), message
    with pytest.raises(ValueError, match="result"):
        explanation_update(*args[:1], "complete", *args[1:], T3, timing=timings(T0, T1, T2, T3),
                           cache_hit=False, kind="counterfactual")  # fmt: skip
    with pytest.raises(ValueError, match="no explanation"):
        explanation_update(*args[:1], "complete", *args[1:], T3, timing=timings(T0, T1, T2, T3),
                           cache_hit=False, kind="counterfactual", explanation=_explanation())  # fmt: skip


def _explanation(raw_offset: float = 0.0) -> Any:
    names = ("amount", "card_median_amount", "amount_to_median", "new_device")
    row = np.array([4250.0, 380.0, 4250.0 / 380.0, 1.0])
    contributions = np.array([2.5, -0.25, 1.0, 0.75])
    return assemble(row, names, contributions, -4.0, 0.0 + raw_offset, "tree", "3f2a9c1b7e04")


def test_status_updates_built_by_the_code_validate(format_checker: Any) -> None:
    args = ("tx-1", "high", "3f2a9c1b7e04", "tree")
    pending = explanation_update(args[0], "pending", *args[1:], T1, timing=timings(T0, T1))
    calculating = explanation_update(
        args[0], "calculating", *args[1:], T2, timing=timings(T0, T1, T2), attempts=1
    )
    explanation = _explanation()
    assert explanation.ok
    complete = finished_update(
        "tx-1", "high", explanation, T3, cache_hit=True, timing=timings(T0, T1, T2, T3)
    )
    for message in (pending, calculating, complete):
        check_both("explanation", message, format_checker)
    assert complete["status"] == "complete" and complete["cache_hit"] is True
    assert complete["top_features"][0]["reason"] == (
        "amount 4,250.00 is 11× this card's median (380.00) — raises risk"
    )
    assert complete["timings"]["verdict_to_complete_ms"] == pytest.approx(27.909)
    assert complete["timings"]["queue_wait_ms"] == pytest.approx(16.712)


def test_an_additivity_violation_is_published_as_failed(format_checker: Any) -> None:
    broken = _explanation(raw_offset=0.001)
    update = finished_update("tx-2", "normal", broken, T3, cache_hit=False, timing=timings(T0, T1, T2, T3))
    check_both("explanation", update, format_checker)
    assert update["status"] == "failed" and update["reason_code"] == "additivity_violation"
    assert update["reason"].startswith("additivity check failed")
    assert update["additivity_residual"] == pytest.approx(-0.001)


def test_update_builder_refuses_inconsistent_states() -> None:
    args = ("tx-1", "high", "3f2a9c1b7e04", "tree", T1)
    with pytest.raises(ValueError, match="status"):
        explanation_update(args[0], "done", *args[1:])
    with pytest.raises(ValueError, match="complete update needs"):
        explanation_update(args[0], "complete", *args[1:], explanation=_explanation())
    with pytest.raises(ValueError, match="failed update needs"):
        explanation_update(args[0], "failed", *args[1:])
    with pytest.raises(ValueError, match="carries no explanation"):
        explanation_update(args[0], "pending", *args[1:], explanation=_explanation())


def test_features_matrix_orders_columns_and_reads_null_as_nan() -> None:
    matrix = features_matrix([{"b": 2.0, "a": None}, {"a": 1.0, "b": 3.0, "c": 9.0}], ("a", "b"))
    assert matrix.shape == (2, 2) and math.isnan(matrix[0, 0])
    assert matrix[0, 1] == 2.0 and list(matrix[1]) == [1.0, 3.0]
    with pytest.raises(ValueError, match="missing"):
        features_matrix([{"a": 1.0}], ("a", "b"))


def test_example_files_use_the_existing_naming() -> None:
    for name in NAMES:
        assert Path(EXAMPLES / f"{name}.valid.json").is_file()
