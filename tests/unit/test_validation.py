"""validate_transaction, InvalidInput, build_dlq_record and the malformed-message generator."""

from __future__ import annotations

import base64
import hashlib
import itertools
import json
import pickle
import random
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from app.records import contracts
from app.records.malformed import MALFORMED_KINDS, base_transaction, malformed_cases, malformed_messages
from app.records.validation import (
    InvalidInput,
    ReasonCode,
    build_dlq_record,
    dlq_key,
    validate_explain_request,
    validate_transaction,
)
from app.settings import Settings

NOW = datetime(2026, 11, 28, 12, 0, 1, 250, tzinfo=UTC)
BASE: dict[str, Any] = contracts.load_schema("transaction")["examples"][0]


def tx(**changes: Any) -> dict[str, Any]:
    """BASE with fields changed; a value of ... removes the field."""
    out = {**BASE, **changes}
    return {k: v for k, v in out.items() if v is not ...}


def rejected(value: bytes | None, **kwargs: Any) -> InvalidInput:
    with pytest.raises(InvalidInput) as caught:
        validate_transaction(value, **kwargs)
    return caught.value


def reject_code(obj: dict[str, Any]) -> str:
    return rejected(orjson.dumps(obj)).code


# ---------------------------------------------------------------- valid input


def test_valid_examples_pass_and_come_back_unchanged() -> None:
    for example in contracts.load_schema("transaction")["examples"]:
        assert validate_transaction(orjson.dumps(example)) == example


def test_generated_transactions_pass() -> None:
    rng = random.Random(1)
    for _ in range(500):
        base = base_transaction(rng)
        assert validate_transaction(orjson.dumps(base)) == base


@pytest.mark.parametrize(
    "changes",
    [
        {"device_id": ...},
        {"device_id": "dev-1"},
        {"amount": 1_000_000},
        {"amount": 0.01},
        {"amount": 5},
        {"transaction_id": "a" * 64},
        {"card_id": "0:a.b_c-d"},
        {"timestamp": "2026-11-28T12:00:00Z"},
        {"timestamp": "2026-11-28T12:00:00.123456789+05:30"},
        {"timestamp": "2028-02-29T23:59:59-08:00"},
    ],
)
def test_boundary_values_accepted(changes: dict[str, Any]) -> None:
    assert validate_transaction(orjson.dumps(tx(**changes))) == tx(**changes)


def test_whitespace_and_key_order_do_not_matter() -> None:
    pretty = orjson.dumps(dict(reversed(list(BASE.items()))), option=orjson.OPT_INDENT_2)
    assert validate_transaction(pretty) == BASE


def test_escaped_strings_are_accepted_via_the_careful_path() -> None:
    raw = orjson.dumps(BASE).replace(b'"EUR"', b'"\\u0045UR"')
    assert validate_transaction(raw) == BASE


def test_bytearray_and_memoryview_are_accepted() -> None:
    raw = orjson.dumps(BASE)
    assert validate_transaction(bytearray(raw)) == BASE  # type: ignore[arg-type]
    assert validate_transaction(memoryview(raw)) == BASE  # type: ignore[arg-type]


# -------------------------------------------------------------- invalid input


@pytest.mark.parametrize(
    ("changes", "code", "field"),
    [
        ({"amount": 1_000_000.01}, "amount_out_of_range", "amount"),
        ({"amount": -0.0}, "amount_out_of_range", "amount"),
        ({"amount": True}, "amount_out_of_range", "amount"),
        ({"amount": None}, "amount_out_of_range", "amount"),
        ({"amount": ...}, "schema", "amount"),
        ({"amount": -1, "card_id": 5}, "schema", "card_id"),  # not only the amount is wrong
        ({"transaction_id": "a" * 65}, "schema", "transaction_id"),
        ({"transaction_id": ""}, "schema", "transaction_id"),
        ({"card_id": "abc\n"}, "schema", "card_id"),  # '$' must not match before a newline
        ({"card_id": "_abc"}, "schema", "card_id"),
        ({"merchant_id": "m 1"}, "schema", "merchant_id"),
        ({"mcc": "\u0665\u0664\u0661\u0661"}, "schema", "mcc"),  # Arabic-Indic digits are not [0-9]
        ({"mcc": 5411}, "schema", "mcc"),
        ({"country": "DEU"}, "schema", "country"),
        ({"card_country": "de"}, "schema", "card_country"),
        ({"currency": "EURO"}, "schema", "currency"),
        ({"channel": "POS"}, "schema", "channel"),
        ({"device_id": 7}, "schema", "device_id"),
        ({"device_id": "bad id"}, "schema", "device_id"),
        ({"timestamp": "2026-11-28t12:00:00z"}, "schema", "timestamp"),
        ({"timestamp": "2026-11-28T12:00:00+0100"}, "schema", "timestamp"),
        ({"timestamp": "2026-11-28T12:00:00+05:75"}, "schema", "timestamp"),
        ({"timestamp": "2026-11-28T12:00:00+24:00"}, "schema", "timestamp"),
        ({"timestamp": "0000-01-01T00:00:00Z"}, "schema", "timestamp"),
        ({"timestamp": "2026-11-28T23:59:60Z"}, "schema", "timestamp"),
        ({"timestamp": "2026-11-28T24:00:00Z"}, "schema", "timestamp"),
        ({"timestamp": "2027-02-29T12:00:00Z"}, "schema", "timestamp"),
        ({"timestamp": "2026-11-28 12:00:00Z"}, "schema", "timestamp"),
        ({"timestamp": 1764331200}, "schema", "timestamp"),
    ],
)
def test_field_problems(changes: dict[str, Any], code: str, field: str) -> None:
    exc = rejected(orjson.dumps(tx(**changes)))
    assert exc.code == code
    assert f"'{field}'" in exc.reason
    assert any(e["path"] == f"/{field}" for e in exc.errors)
    assert exc.transaction_id == changes.get("transaction_id", BASE["transaction_id"]) or (
        "transaction_id" in changes
    )


def test_all_problems_are_listed_but_the_reason_names_the_first() -> None:
    exc = rejected(orjson.dumps(tx(card_id=1, mcc=..., extra1=1, extra2=2)))
    assert exc.code == "schema"
    assert [e["path"] for e in exc.errors] == ["/card_id", "/mcc", "/extra1", "/extra2"]
    assert exc.reason.startswith("field 'card_id': ") and "(and 3 more problems)" in exc.reason


def test_error_list_is_capped() -> None:
    exc = rejected(orjson.dumps(tx(**{f"x{i}": i for i in range(500)})))
    assert len(exc.errors) == 21
    assert exc.errors[-1]["message"] == "480 more errors omitted"
    contracts.validate_message("dlq", build_dlq_record(b"v", None, exc, "t", 0, 0, NOW))


def test_non_finite_number_anywhere_is_named_with_its_path() -> None:
    raw = orjson.dumps(tx(extra=[1, "__X__"])).replace(b'"__X__"', b"NaN")
    exc = rejected(raw)
    assert exc.code == "non_finite_number"
    assert exc.errors == [{"path": "/extra/1", "message": exc.errors[0]["message"]}]


def test_huge_integer_is_non_finite_not_a_crash() -> None:
    exc = rejected(b'{"amount": ' + b"9" * 5000 + b"}")
    assert exc.code == "non_finite_number"
    assert len(exc.reason) < 200


def test_duplicate_keys_are_rejected_even_when_each_value_is_valid() -> None:
    raw = orjson.dumps(BASE)[:-1] + b',"amount":43.5}'
    exc = rejected(raw)
    assert exc.code == "duplicate_key"
    assert exc.errors[0]["path"] == "/amount"
    assert "'amount'" in exc.reason


def test_duplicate_keys_found_when_escapes_defeat_the_quote_count() -> None:
    raw = orjson.dumps(BASE)[:-1] + b',"\\u0061mount":43.5}'  # \u0061 == 'a'
    assert rejected(raw).code == "duplicate_key"


def test_duplicate_key_inside_a_nested_value() -> None:
    raw = orjson.dumps(tx(extra="__X__")).replace(b'"__X__"', b'{"a":1,"a":2}')
    exc = rejected(raw)
    assert exc.code == "duplicate_key"
    assert exc.errors[0]["path"] == ""  # not a top-level key


def test_null_value_is_empty() -> None:
    exc = rejected(None)
    assert exc.code == "empty" and "null" in exc.reason


@pytest.mark.parametrize("nesting", [b"[" * 100_000, b'{"a":' * 50_000])
def test_deep_nesting_never_raises_recursion_error(nesting: bytes) -> None:
    exc = rejected(nesting + b"1" + b"}" * 50_000, max_bytes=1 << 20)
    assert exc.code == "not_json"


def test_nesting_within_parser_limits_is_reported_by_schema() -> None:
    raw = orjson.dumps(tx(extra="__X__")).replace(b'"__X__"', b"[" * 500 + b"]" * 500)
    exc = rejected(raw)
    assert exc.code == "schema" and exc.errors[0]["path"] == "/extra"


def test_lone_surrogates_never_break_dlq_serialisation() -> None:
    for raw in (b'{"\\ud800": 1}', orjson.dumps(BASE).replace(b'"EUR"', b'"\\udc00"')):
        exc = rejected(raw)
        assert exc.code == "schema"
        orjson.dumps(build_dlq_record(raw, None, exc, "t", 0, 0, NOW))


def test_oversized_checked_before_anything_else() -> None:
    exc = rejected(b"\xff" * 70_000)
    assert exc.code == "oversized"
    assert exc.reason == "message is 70000 bytes, above the limit of 65536"


def test_best_effort_transaction_id() -> None:
    assert rejected(orjson.dumps(BASE)[:-20]).transaction_id == BASE["transaction_id"]
    assert rejected(b"garbage").transaction_id is None
    assert rejected(orjson.dumps(tx(transaction_id="x" * 500))).transaction_id is None


# ---------------------------------------------------------- reasons stay short


HUGE = 1_000_000


@pytest.mark.parametrize(
    "raw",
    [
        orjson.dumps(tx(card_id="c" * HUGE)),
        orjson.dumps(tx(**{"k" * HUGE: 1})),
        orjson.dumps(tx(channel="w" * HUGE)),
        orjson.dumps(tx(timestamp="2" * HUGE)),
        orjson.dumps(["x" * HUGE]),
        orjson.dumps("x" * HUGE),
        orjson.dumps(BASE)[:-1] + b',"' + b"k" * HUGE + b'":NaN}',
        orjson.dumps(BASE)[:-1] + b',"' + b"d" * HUGE + b'":1,"' + b"d" * HUGE + b'":2}',
        b"x" * HUGE,
        b'{"a": "' + b"\xff" * HUGE,
    ],
)
def test_reasons_quote_little_of_huge_inputs(raw: bytes) -> None:
    exc = rejected(raw, max_bytes=3 * HUGE)
    assert len(exc.reason) <= 300
    assert all(len(e["message"]) <= 300 and len(e["path"]) <= 300 for e in exc.errors)
    record = build_dlq_record(raw, b"k", exc, "transactions", 0, 1, NOW)
    contracts.validate_message("dlq", record)
    assert len(orjson.dumps({**record, "original_value_b64": None})) < 3000


# ---------------------------------------------------------------- InvalidInput


def test_invalid_input_api() -> None:
    exc = InvalidInput(ReasonCode.SCHEMA, "field 'x': bad", [{"path": "/x", "message": "bad"}], "tx-1")
    assert exc.code == "schema" and type(exc.code) is str
    assert str(exc) == "schema: field 'x': bad"
    copy = pickle.loads(pickle.dumps(exc))
    assert (copy.code, copy.reason, copy.errors, copy.transaction_id) == (
        "schema",
        "field 'x': bad",
        [{"path": "/x", "message": "bad"}],
        "tx-1",
    )
    assert InvalidInput("wrong_key", "key is not card_id").code == "wrong_key"
    with pytest.raises(ValueError):
        InvalidInput("made_up", "x")
    assert len(InvalidInput("empty", "y" * 10_000).reason) <= 300


# ---------------------------------------------------------------- DLQ records


def test_dlq_record_round_trips_original_bytes() -> None:
    value, key = b'{"amount": -5, \xff}', b"\x00card\xfe"
    exc = rejected(value)
    record = build_dlq_record(value, key, exc, "transactions", 2, 99, NOW)
    contracts.validate_message("dlq", record)
    assert base64.b64decode(record["original_value_b64"]) == value
    assert base64.b64decode(record["original_key_b64"]) == key
    assert record["source"] == {"topic": "transactions", "partition": 2, "offset": 99}
    assert record["rejected_at"] == "2026-11-28T12:00:01.000250Z"
    assert (record["reason_code"], record["reason"]) == (exc.code, exc.reason)


@pytest.mark.parametrize("size", [0, 1, 4095, 4096, 4097, 1_048_000, 4_000_000])
def test_dlq_record_is_bounded_whatever_the_size(size: int) -> None:
    """Length, SHA-256 and a prefix: a ~1 MB input no longer makes a ~1.4 MB record (issue 17)."""
    value, key = bytes(range(256)) * (size // 256) + b"v" * (size % 256), b"k" * (size // 100)
    record = build_dlq_record(value, key, rejected(value), "transactions", 0, 7, NOW)
    contracts.validate_message("dlq", record)
    prefix = base64.b64decode(record["original_value_b64"])
    assert prefix == value[:4096] and record["original_value_bytes"] == size
    assert record["original_value_truncated"] is (size > 4096)
    assert record["original_value_sha256"] == hashlib.sha256(value).hexdigest()
    assert base64.b64decode(record["original_key_b64"]) == key[:1024]
    assert record["original_key_truncated"] is (len(key) > 1024)
    assert record["original_key_sha256"] == hashlib.sha256(key).hexdigest()
    assert len(orjson.dumps(record)) < 10_000


def test_dlq_record_prefixes_follow_the_settings() -> None:
    value, key = b"v" * 100, b"k" * 100
    record = build_dlq_record(
        value, key, rejected(value), "t", 0, 0, NOW, value_prefix_bytes=10, key_prefix_bytes=0
    )
    contracts.validate_message("dlq", record)
    assert base64.b64decode(record["original_value_b64"]) == b"v" * 10
    assert (record["original_key_b64"], record["original_key_truncated"]) == ("", True)
    assert dlq_key(key, 5) == b"kkkkk" and dlq_key(None, 5) is None


def test_dlq_record_for_tombstone_and_default_clock() -> None:
    record = build_dlq_record(None, None, rejected(None), "transactions", 0, 0)
    contracts.validate_message("dlq", record)
    assert record["original_value_b64"] is None and record["original_key_b64"] is None
    with pytest.raises(ValueError):
        build_dlq_record(None, None, rejected(None), "t", 0, 0, datetime(2026, 1, 1))


# ------------------------------------------------------------ malformed kinds


CASES = {case.kind: case for case in malformed_cases(len(MALFORMED_KINDS), seed=7)}


@pytest.mark.parametrize("kind", MALFORMED_KINDS)
def test_each_malformed_kind_gets_its_code_and_a_precise_reason(kind: str) -> None:
    case = CASES[kind]
    exc = rejected(case.value)
    assert exc.code == case.code, exc.reason
    for word in case.mentions:
        assert word.lower() in exc.reason.lower(), (word, exc.reason)
    record = build_dlq_record(case.value, b"bad", exc, "transactions", 0, 1, NOW)
    contracts.validate_message("dlq", record)
    orjson.dumps(record)


def test_malformed_messages_cycle_through_every_kind_deterministically() -> None:
    cases = malformed_cases(100, seed=3)
    assert len(cases) == 100
    assert set(c.kind for c in cases[: len(MALFORMED_KINDS)]) == set(MALFORMED_KINDS)
    assert malformed_messages(100, seed=3) == [(c.value, c.code) for c in cases]
    assert malformed_messages(100, seed=3) != malformed_messages(100, seed=4)
    codes = Counter(code for _, code in malformed_messages(100, seed=3))
    assert set(codes) == {c.value for c in ReasonCode} - {"wrong_key", "invalid_request"}


def test_every_malformed_message_is_rejected_with_its_code() -> None:
    for value, code in malformed_messages(300, seed=11):
        assert rejected(value).code == code


def test_malformed_messages_use_valid_source_lazily() -> None:
    def source() -> Iterator[dict[str, Any]]:
        for i in itertools.count():
            yield tx(transaction_id=f"src-{i}")

    cases = malformed_cases(60, seed=1, valid_source=source())
    unknown = [c for c in cases if c.kind == "unknown_field"]
    assert unknown and all(b'"src-' in (c.value or b"") for c in unknown)
    # a finite source runs out gracefully into random transactions
    assert len(malformed_messages(60, seed=1, valid_source=[BASE])) == 60


def test_invalid_valid_source_is_refused() -> None:
    with pytest.raises(ValueError, match="invalid transaction"):
        malformed_messages(5, seed=1, valid_source=[tx(amount=-1)])


def test_oversized_kind_follows_the_configured_limit() -> None:
    (case,) = [c for c in malformed_cases(len(MALFORMED_KINDS), 2, max_bytes=2048) if c.kind == "oversized"]
    assert rejected(case.value, max_bytes=2048).code == "oversized"


# ------------------------------------------------------------------ properties

hypothesis = pytest.importorskip("hypothesis")
st = hypothesis.strategies

JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers()
    | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)


@hypothesis.given(st.binary(max_size=2048))
@hypothesis.settings(max_examples=500, deadline=None, database=None)
def test_arbitrary_bytes_give_a_dict_or_invalid_input(raw: bytes) -> None:
    try:
        assert isinstance(validate_transaction(raw), dict)
    except InvalidInput as exc:
        assert exc.code in {c.value for c in ReasonCode}
        assert exc.reason and len(exc.reason) <= 300
        orjson.dumps(build_dlq_record(raw, None, exc, "t", 0, 0, NOW))


@hypothesis.given(
    st.dictionaries(st.sampled_from([*BASE, "extra"]), JSON_VALUES, max_size=4),
    st.sets(st.sampled_from(list(BASE)), max_size=2),
    st.booleans(),
)
@hypothesis.settings(max_examples=500, deadline=None, database=None)
def test_mutated_transactions_accepted_only_when_the_reference_validator_agrees(
    changes: dict[str, Any], removed: set[str], ascii_only: bool
) -> None:
    jsonschema = pytest.importorskip("jsonschema")
    candidate = {k: v for k, v in {**BASE, **changes}.items() if k not in removed}
    # stdlib dumps: big ints allowed; ensure_ascii exercises the escaped-string path
    raw = json.dumps(candidate, ensure_ascii=ascii_only).encode()
    try:
        result = validate_transaction(raw)
    except InvalidInput as exc:
        orjson.dumps(build_dlq_record(raw, None, exc, "t", 0, 0, NOW))
        return
    checker = jsonschema.FormatChecker()
    jsonschema.Draft202012Validator(contracts.load_schema("transaction"), format_checker=checker).validate(
        result
    )


# ------------------------------------------------------- on-demand requests (explain.requests)

METHODS = ("tree", "interventional")


def test_a_valid_on_demand_request_is_returned() -> None:
    assert validate_explain_request(b'{"transaction_id": "tx-1"}', b"tx-1", METHODS) == {
        "transaction_id": "tx-1"
    }
    asked = b'{"transaction_id": "tx-1", "method": "interventional"}'
    assert validate_explain_request(asked, b"tx-1", METHODS)["method"] == "interventional"
    assert validate_explain_request(b'{"transaction_id": "tx-1", "method": null}', b"tx-1", METHODS)


@pytest.mark.parametrize(
    ("value", "key", "code"),
    [
        (None, b"tx-1", "empty"),
        (b"", b"tx-1", "empty"),
        (b"\xff\xfe", b"tx-1", "not_utf8"),
        (b'{"transaction_id": ', b"tx-1", "not_json"),
        (b'["tx-1"]', b"tx-1", "not_object"),
        (b"{}", b"tx-1", "invalid_request"),
        (b'{"transaction_id": 12}', b"12", "invalid_request"),
        (b'{"transaction_id": ""}', b"", "invalid_request"),
        (b'{"transaction_id": "tx 1"}', b"tx 1", "invalid_request"),
        (b'{"transaction_id": "tx-1", "method": "magic"}', b"tx-1", "invalid_request"),
        (b'{"transaction_id": "tx-1", "method": ["tree"]}', b"tx-1", "invalid_request"),
        (b'{"transaction_id": "tx-1", "extra": 1}', b"tx-1", "invalid_request"),
        (b'{"transaction_id": "tx-1"}', b"tx-2", "wrong_key"),
        (b'{"transaction_id": "tx-1"}', None, "wrong_key"),
        (b'{"transaction_id": "' + b"x" * 70_000 + b'"}', b"tx-1", "oversized"),
    ],
)
def test_a_bad_on_demand_request_is_named_and_makes_a_valid_dlq_record(
    value: bytes | None, key: bytes | None, code: str
) -> None:
    with pytest.raises(InvalidInput) as caught:
        validate_explain_request(value, key, METHODS)
    assert caught.value.code == code, caught.value
    record = build_dlq_record(value, key, caught.value, "explain.requests", 1, 5, NOW)
    contracts.validate_message("dlq", record)
    assert len(orjson.dumps(record)) < 10_000


def test_the_largest_dlq_record_fits_a_broker_record_at_the_largest_settings() -> None:
    """Worst case: every error slot filled with escaped 300-character paths, a reason full of
    escapes, and the prefixes at their setting maxima: still well under the ~1 MB a broker takes."""
    fields = {("\\\U0010ffff" * 200) + str(i): "\\" * 1000 for i in range(100)}
    raw = json.dumps(fields, ensure_ascii=False).encode()
    with pytest.raises(InvalidInput) as caught:
        validate_transaction(raw, 10**7)
    limits = Settings.model_fields
    record = build_dlq_record(
        raw, b"k" * 100_000, caught.value, "transactions", 0, 0, NOW,
        value_prefix_bytes=_upper_bound(limits["dlq_value_prefix_bytes"].metadata),
        key_prefix_bytes=_upper_bound(limits["dlq_key_prefix_bytes"].metadata),
    )  # fmt: skip
    contracts.validate_message("dlq", record)
    assert len(caught.value.errors) == 21 and len(orjson.dumps(record)) < 500_000


def _upper_bound(metadata: list[Any]) -> int:
    return next(int(m.le) for m in metadata if hasattr(m, "le"))


WRONG_TYPES: tuple[Any, ...] = (123, 1.5, True, None, [], {"a": 1}, "12.5")


@pytest.mark.parametrize("field", sorted(base_transaction(random.Random(1))))
def test_a_wrong_type_at_any_field_is_rejected(field: str) -> None:
    base = base_transaction(random.Random(1))
    allowed = {"amount": (int, float), "device_id": (str, type(None))}.get(field, (str,))
    for wrong in WRONG_TYPES:
        if isinstance(wrong, allowed) and not isinstance(wrong, bool):
            continue
        with pytest.raises(InvalidInput) as caught:
            validate_transaction(orjson.dumps({**base, field: wrong}))
        assert caught.value.code in ("schema", "amount_out_of_range"), (field, wrong)
