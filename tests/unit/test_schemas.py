"""The JSON Schema files: well-formed, documented, self-consistent, and their
examples behave the same under the reference validator (jsonschema) and the
runtime one (fastjsonschema via app.records.contracts)."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import fastjsonschema
import jsonschema
import pytest
import rfc3339_validator  # noqa: F401  (jsonschema checks date-time only when it imports)

from app.records import contracts
from app.records.validation import InvalidInput, ReasonCode, validate_transaction

EXAMPLES = contracts.SCHEMA_DIR / "examples"

# invalid example file -> reason code validate_transaction must give it
INVALID_TRANSACTIONS = {
    "transaction.invalid.negative-amount.json": "amount_out_of_range",
    "transaction.invalid.amount-as-string.json": "amount_out_of_range",
    "transaction.invalid.missing-card-id.json": "schema",
    "transaction.invalid.unknown-field.json": "schema",
    "transaction.invalid.timestamp-without-timezone.json": "schema",
    "transaction.invalid.bad-channel.json": "schema",
    "transaction.invalid.lowercase-currency.json": "schema",
}


@pytest.fixture(scope="module")
def format_checker() -> Any:
    """A FormatChecker that really checks date-time (needs rfc3339-validator)."""
    checker = jsonschema.FormatChecker()
    assert not checker.conforms("2026-11-28T12:00:00", "date-time")
    return checker


def reference_validator(name: str, checker: Any) -> Any:
    schema = contracts.load_schema(name)
    return jsonschema.Draft202012Validator(schema, format_checker=checker)


def _load(path: Path) -> Any:
    return json.loads(path.read_text(encoding="utf-8"))


@pytest.mark.parametrize("name", contracts.SCHEMA_NAMES)
def test_schema_is_valid_draft_2020_12_with_metadata(name: str) -> None:
    schema = contracts.load_schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f"/{name}.schema.json")
    assert schema["title"] and schema["description"]
    assert schema["examples"], "at least one full example message"
    assert schema["additionalProperties"] is False
    assert set(schema["required"]) <= set(schema["properties"])


def _undocumented(node: Any, path: str) -> list[str]:
    """Paths of properties (at any depth) that lack a description."""
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


@pytest.mark.parametrize("name", contracts.SCHEMA_NAMES)
def test_every_property_has_a_description(name: str) -> None:
    assert _undocumented(contracts.load_schema(name), "") == []


@pytest.mark.parametrize("name", contracts.SCHEMA_NAMES)
def test_embedded_examples_validate_with_both_validators(name: str, format_checker: Any) -> None:
    schema = contracts.load_schema(name)
    for example in schema["examples"]:
        reference_validator(name, format_checker).validate(example)
        contracts.validate_message(name, example)


@pytest.mark.parametrize("name", contracts.SCHEMA_NAMES)
def test_valid_example_file_validates_with_both_validators(name: str, format_checker: Any) -> None:
    example = _load(EXAMPLES / f"{name}.valid.json")
    reference_validator(name, format_checker).validate(example)
    contracts.validate_message(name, example)


def test_every_example_file_is_covered() -> None:
    files = {p.name for p in EXAMPLES.glob("*.json")}
    expected = {f"{n}.valid.json" for n in contracts.SCHEMA_NAMES} | set(INVALID_TRANSACTIONS)
    assert files == expected


@pytest.mark.parametrize("filename", sorted(INVALID_TRANSACTIONS))
def test_invalid_transaction_examples_fail_everywhere(filename: str, format_checker: Any) -> None:
    example = _load(EXAMPLES / filename)
    assert list(reference_validator("transaction", format_checker).iter_errors(example))
    with pytest.raises(contracts.ContractViolation):
        contracts.validate_message("transaction", example)
    with pytest.raises(InvalidInput) as caught:
        validate_transaction((EXAMPLES / filename).read_bytes())
    assert caught.value.code == INVALID_TRANSACTIONS[filename]


def test_valid_transaction_file_passes_runtime_validation_as_pretty_printed_bytes() -> None:
    raw = (EXAMPLES / "transaction.valid.json").read_bytes()
    assert validate_transaction(raw) == json.loads(raw)


def test_dlq_reason_codes_match_the_code() -> None:
    enum = contracts.load_schema("dlq")["properties"]["reason_code"]["enum"]
    assert enum == [code.value for code in ReasonCode]


def test_dlq_examples_are_what_the_validator_really_produces() -> None:
    """The documented DLQ examples must not drift from the real behaviour."""
    for example in contracts.load_schema("dlq")["examples"]:
        contracts.validate_message("dlq", example)
        original = base64.b64decode(example["original_value_b64"])
        if example["original_value_truncated"]:  # the oversized example: x repeated, as its prefix
            original = original[:1] * example["original_value_bytes"]
        assert hashlib.sha256(original).hexdigest() == example["original_value_sha256"]
        with pytest.raises(InvalidInput) as caught:
            validate_transaction(original)
        assert caught.value.code == example["reason_code"]
        assert caught.value.reason == example["reason"]
        assert caught.value.errors == example["errors"]


def _resolved(schema: dict[str, Any], prop: dict[str, Any]) -> dict[str, Any]:
    """A property's constraints with a local $ref inlined and descriptions dropped."""
    merged = dict(prop)
    ref = merged.pop("$ref", None)
    if ref:
        merged = {**schema["$defs"][ref.rsplit("/", 1)[1]], **merged}
    return {k: v for k, v in merged.items() if k != "description"}


@pytest.mark.parametrize(
    "field",
    [
        "transaction_id",
        "card_id",
        "merchant_id",
        "amount",
        "currency",
        "channel",
        "country",
        "card_country",
        "mcc",
    ],
)
def test_verdict_copies_transaction_constraints(field: str) -> None:
    tx, verdict = contracts.load_schema("transaction"), contracts.load_schema("verdict")
    assert _resolved(verdict, verdict["properties"][field]) == _resolved(tx, tx["properties"][field])


def test_verdict_event_time_accepts_exactly_transaction_timestamps() -> None:
    tx, verdict = contracts.load_schema("transaction"), contracts.load_schema("verdict")
    assert verdict["$defs"]["event_time"]["pattern"] == tx["properties"]["timestamp"]["pattern"]


def test_all_identifier_patterns_are_the_same() -> None:
    tx = contracts.load_schema("transaction")
    assert tx["properties"]["device_id"]["pattern"] == tx["$defs"]["identifier"]["pattern"]


# ------------------------------------------------------------- contracts module


def test_load_schema_accepts_file_names_and_returns_private_copies() -> None:
    first = contracts.load_schema("verdict.schema.json")
    first["title"] = "mutated"
    assert contracts.load_schema("verdict")["title"] != "mutated"
    with pytest.raises(KeyError, match="unknown schema"):
        contracts.load_schema("nope")


def test_validator_is_compiled_once() -> None:
    assert contracts.validator("dlq") is contracts.validator("dlq.schema.json")


def test_compiling_does_not_mutate_the_schema() -> None:
    """fastjsonschema rewrites $refs in place; the cached schema must not see it."""
    contracts.validator("transaction")
    contracts.compile_schema(contracts.load_schema("verdict"))
    assert contracts.load_schema("transaction")["properties"]["card_id"]["$ref"] == "#/$defs/identifier"
    assert contracts.load_schema("verdict")["properties"]["card_id"]["$ref"] == "#/$defs/identifier"


def test_validate_message_names_the_path() -> None:
    verdict = _load(EXAMPLES / "verdict.valid.json")
    verdict["score"] = 1.5
    with pytest.raises(contracts.ContractViolation) as caught:
        contracts.validate_message("verdict", verdict)
    assert caught.value.path == "/score"
    assert "verdict" in str(caught.value) and "score" in str(caught.value)
    assert isinstance(caught.value, ValueError)


def test_validate_message_checks_calendar_dates() -> None:
    verdict = _load(EXAMPLES / "verdict.valid.json")
    verdict["scored_at"] = "2026-02-30T12:00:00.000000Z"
    with pytest.raises(contracts.ContractViolation):
        contracts.validate_message("verdict", verdict)


def test_inline_local_refs_removes_every_ref_and_keeps_meaning(format_checker: Any) -> None:
    for name in contracts.SCHEMA_NAMES:
        schema = contracts.load_schema(name)
        inlined = contracts.inline_local_refs(schema)
        assert '"$ref":' not in json.dumps({k: v for k, v in inlined.items() if k != "$defs"})
        reference = jsonschema.Draft202012Validator(inlined, format_checker=format_checker)
        for example in schema["examples"]:
            reference.validate(example)
    tx = contracts.inline_local_refs(contracts.load_schema("transaction"))
    assert tx["properties"]["card_id"]["pattern"] == tx["$defs"]["identifier"]["pattern"]
    assert tx["properties"]["card_id"]["description"].startswith("Opaque card")


def test_remote_refs_are_refused_not_fetched() -> None:
    schema = {"$ref": "https://example.invalid/other.json"}
    with pytest.raises((ValueError, fastjsonschema.JsonSchemaException)):
        contracts.compile_schema(schema)(1)


def test_format_utc() -> None:
    from datetime import UTC, datetime, timedelta, timezone

    moment = datetime(2026, 11, 28, 13, 0, 0, 250, tzinfo=timezone(timedelta(hours=1)))
    assert contracts.format_utc(moment) == "2026-11-28T12:00:00.000250Z"
    assert contracts.format_utc(datetime(2026, 1, 1, tzinfo=UTC)).endswith(".000000Z")
    with pytest.raises(ValueError, match="timezone-aware"):
        contracts.format_utc(datetime(2026, 1, 1))


def test_schema_dir_env_override(tmp_path: Path) -> None:
    code = "from app.records import contracts; print(contracts.SCHEMA_DIR)"
    env = {"FRAUDLENS_SCHEMA_DIR": str(tmp_path), "PATH": ""}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        cwd=contracts.SCHEMA_DIR.parent,
    )
    assert out.stdout.strip() == str(tmp_path)
