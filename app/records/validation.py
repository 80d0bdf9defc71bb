"""Validation of raw ``transactions`` messages against schemas/transaction.schema.json.

Two paths, by design:

* **Fast path** (every message): ``orjson.loads`` + a compiled fastjsonschema
  validator + a calendar check of the timestamp + a quote-count duplicate-key
  check. No exception is raised for a valid message, so the cost is a few
  microseconds.
* **Slow path** (only when the fast path fails, or cannot be sure): re-parse
  with the stdlib ``json`` and hooks to name the exact problem — NaN/Infinity,
  duplicate keys, every schema violation with its field — and raise
  ``InvalidInput`` with a reason code, one human sentence and a list of errors.

Duplicate keys are *rejected* (not "last wins"): a producer that sends two
``amount`` keys is broken, and which value a consumer sees would depend on its
JSON library. Detecting them on the fast path costs well under 1 µs (see
``_no_duplicate_keys``), so there is no reason to accept them.

Reasons and error messages quote at most ~60 characters of any input value
(escaped with ``ascii()``), so a 1 MB string never ends up in a DLQ sentence
or a log line, and lone surrogates never reach orjson when the record is
serialised.
"""

from __future__ import annotations

import base64
import hashlib
import json
import math
import re
from datetime import datetime
from enum import StrEnum
from functools import cache
from typing import Any, NamedTuple

import fastjsonschema
import orjson

from app.records import contracts
from app.records.kinds import CONTRIBUTIONS, KINDS

__all__ = [
    "DEFAULT_MAX_BYTES",
    "InvalidInput",
    "ReasonCode",
    "build_dlq_record",
    "dlq_key",
    "explain_request_record",
    "validate_explain_request",
    "validate_transaction",
]

DEFAULT_MAX_BYTES = 65536
_SNIPPET_CHARS = 60  # input characters quoted per value in messages
_MAX_ERRORS = 20  # errors listed per record; the rest are summarised
_MAX_REASON = 300  # hard cap on a reason sentence, whatever happens
_MAX_INT_DIGITS = 309  # longer integer literals cannot be a finite double


class ReasonCode(StrEnum):
    """Why a message was rejected; ordered as the checks run."""

    OVERSIZED = "oversized"
    EMPTY = "empty"
    NOT_UTF8 = "not_utf8"
    NOT_JSON = "not_json"
    NON_FINITE_NUMBER = "non_finite_number"
    DUPLICATE_KEY = "duplicate_key"
    NOT_OBJECT = "not_object"
    SCHEMA = "schema"
    AMOUNT_OUT_OF_RANGE = "amount_out_of_range"
    # Raised by the scorer (not here) for a valid transaction whose Kafka key
    # is not its card_id: per-card ordering and state would silently break.
    WRONG_KEY = "wrong_key"
    # Raised by the explainer's router (``validate_explain_request``) for an ``explain.requests``
    # record whose fields are missing or wrong; it goes to ``explain.requests.dlq``.
    INVALID_REQUEST = "invalid_request"


class InvalidInput(Exception):
    """A message that does not satisfy the transaction contract."""

    def __init__(
        self,
        code: ReasonCode | str,
        reason: str,
        errors: list[dict[str, str]] | None = None,
        transaction_id: str | None = None,
    ) -> None:
        # Pass everything to Exception so pickling (e.g. across processes)
        # round-trips the full object.
        super().__init__(code, reason, errors, transaction_id)
        self.code: str = ReasonCode(code).value
        self.reason: str = _cap(reason, _MAX_REASON)
        self.errors: list[dict[str, str]] = list(errors or [])
        self.transaction_id: str | None = transaction_id

    def __str__(self) -> str:
        return f"{self.code}: {self.reason}"


# --------------------------------------------------------------------- fast path


class _Transaction(NamedTuple):
    """The transaction schema, compiled."""

    hot_schema: dict[str, Any]
    validate: contracts.Validator
    properties: tuple[str, ...]
    required: tuple[str, ...]


@cache
def _transaction() -> _Transaction:
    """Loaded and compiled once, at the first validation (nothing is read at import). Formats
    off: the timestamp's pattern (RFC 3339 shape, offset ranges) plus datetime.fromisoformat
    (calendar, hour/minute ranges) is stricter than fastjsonschema's date-time regex and ~1 µs
    cheaper."""
    schema = contracts.load_schema("transaction")
    hot = contracts.inline_local_refs(schema)
    return _Transaction(
        hot,
        contracts.compile_schema(hot, use_formats=False),
        tuple(schema["properties"]),
        tuple(schema["required"]),
    )


def compile_transaction_schema() -> None:
    """Load and compile the transaction schema now (a role calls it at start: a missing or bad
    ``FRAUDLENS_SCHEMA_DIR`` stops it there, and the first batch pays no compile)."""
    _transaction()


def validate_transaction(value: bytes | None, max_bytes: int = DEFAULT_MAX_BYTES) -> dict[str, Any]:
    """Return the parsed transaction, or raise ``InvalidInput`` naming the problem.

    Never raises anything else for ``bytes`` or ``None`` input. The returned
    dict is exactly the JSON object (timestamp still a string).
    """
    if type(value) is not bytes:
        value = _as_bytes(value)
    fast_error: ValueError | None = None
    if value is not None and 0 < len(value) <= max_bytes:
        try:
            obj = orjson.loads(value)
            _transaction().validate(obj)
            # The schema's pattern cannot know calendars (Feb 30, hour 24).
            datetime.fromisoformat(obj["timestamp"])
        except ValueError as exc:  # orjson, fastjsonschema and datetime all raise ValueError
            fast_error = exc
        else:
            if _no_duplicate_keys(value, obj):
                return obj  # type: ignore[no-any-return]
    return _slow_path(value, max_bytes, fast_error)


def _as_bytes(value: Any) -> bytes | None:
    """Coerce bytearray/memoryview/str (lenient callers) to bytes."""
    if value is None or isinstance(value, bytes):
        return value
    if isinstance(value, str):
        # surrogatepass keeps lone surrogates as bytes that then fail as not_utf8
        return value.encode("utf-8", "surrogatepass")
    return bytes(value)


def _no_duplicate_keys(raw: bytes, obj: dict[str, Any]) -> bool:
    """True when ``raw`` certainly has no duplicate keys (well under 1 µs).

    Without backslashes every '"' in the bytes delimits a string token. A
    schema-valid object holds len(obj) keys and only string values except
    'amount' (a number) and a null 'device_id', so any extra key occurrence
    shows up as surplus quotes. With escapes present we cannot count, and
    answer False so the slow path decides (valid messages never need escapes:
    all their strings are plain ASCII).
    """
    if b"\\" in raw:
        return False
    n_strings = len(obj) - 1 - (obj.get("device_id", 0) is None)
    return raw.count(b'"') == 2 * (len(obj) + n_strings)


# --------------------------------------------------------------------- slow path


def _slow_path(value: bytes | None, max_bytes: int, fast_error: ValueError | None) -> dict[str, Any]:
    """Find out precisely what is wrong; return the object if nothing is."""
    text = _check_envelope(value, max_bytes)
    obj = _parse_precisely(text)
    if not isinstance(obj, dict):
        raise InvalidInput(
            ReasonCode.NOT_OBJECT, f"value is valid JSON but {_describe(obj)}, not a JSON object"
        )
    tx_id = _readable_id(obj.get("transaction_id"))
    errors = _schema_errors(obj)
    if errors:
        only_amount = all(e["path"] == "/amount" and e["message"] != _MISSING for e in errors)
        code = ReasonCode.AMOUNT_OUT_OF_RANGE if only_amount else ReasonCode.SCHEMA
        raise InvalidInput(code, _reason_from(errors), _capped(errors), tx_id)
    if fast_error is not None:
        # The precise checks found nothing the fast path did (e.g. orjson
        # refuses a lone surrogate the stdlib accepts). Never accept here: the
        # fast path is the contract, so report its own message.
        code = ReasonCode.NOT_JSON if isinstance(fast_error, orjson.JSONDecodeError) else ReasonCode.SCHEMA
        raise InvalidInput(code, f"value is rejected: {_cap(str(fast_error), 150)}", transaction_id=tx_id)
    return obj


def _check_envelope(value: bytes | None, max_bytes: int) -> str:
    """Size, emptiness and encoding checks; returns the decoded text."""
    if value is None:
        raise InvalidInput(
            ReasonCode.EMPTY, "value is null (a tombstone); expected a JSON transaction object"
        )
    if len(value) > max_bytes:
        raise InvalidInput(
            ReasonCode.OVERSIZED,
            f"message is {len(value)} bytes, above the limit of {max_bytes}",
            transaction_id=_sniff_id(value),
        )
    if not value.strip(b" \t\r\n"):
        what = "empty (0 bytes)" if not value else f"only whitespace ({len(value)} bytes)"
        raise InvalidInput(ReasonCode.EMPTY, f"value is {what}; expected a JSON transaction object")
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad = value[exc.start]
        raise InvalidInput(
            ReasonCode.NOT_UTF8,
            f"value is not valid UTF-8: {exc.reason} 0x{bad:02x} at byte offset {exc.start}",
            transaction_id=_sniff_id(value),
        ) from None


class _ParseNotes:
    """What the stdlib parse hooks saw that orjson would have refused."""

    def __init__(self) -> None:
        self.non_finite: list[str] = []  # offending literals, as written
        self.duplicates: list[tuple[str, dict[str, Any]]] = []  # (key, object holding it)

    def pairs(self, pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        obj = dict(pairs)
        if len(obj) != len(pairs):
            seen: set[str] = set()
            for key, _ in pairs:
                if key in seen:
                    self.duplicates.append((key, obj))
                    break
                seen.add(key)
        return obj

    def constant(self, literal: str) -> float:
        self.non_finite.append(literal)
        return float(literal)  # 'NaN', 'Infinity', '-Infinity' are valid float() input

    def float_(self, literal: str) -> float:
        number = float(literal)
        if math.isinf(number):
            self.non_finite.append(literal)
        return number

    def int_(self, literal: str) -> int | float:
        # Beyond double range (orjson says "infinity"); also dodges Python's
        # 4300-digit int conversion limit, which would raise ValueError.
        if len(literal.lstrip("-")) > _MAX_INT_DIGITS:
            self.non_finite.append(literal)
            return math.inf
        return int(literal)


def _parse_precisely(text: str) -> Any:
    """Parse with the stdlib, rejecting non-finite numbers and duplicate keys."""
    notes = _ParseNotes()
    try:
        obj = json.loads(
            text,
            object_pairs_hook=notes.pairs,
            parse_constant=notes.constant,
            parse_float=notes.float_,
            parse_int=notes.int_,
        )
    except json.JSONDecodeError as exc:
        raise InvalidInput(
            ReasonCode.NOT_JSON,
            f"value is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}",
            transaction_id=_sniff_id(text.encode("utf-8")),
        ) from None
    except RecursionError:
        raise InvalidInput(
            ReasonCode.NOT_JSON, "value is not valid JSON: arrays/objects are nested too deeply to parse"
        ) from None
    _raise_parse_notes(notes, obj)
    return obj


def _raise_parse_notes(notes: _ParseNotes, obj: Any) -> None:
    tx_id = _readable_id(obj.get("transaction_id")) if isinstance(obj, dict) else None
    if notes.non_finite:
        path = _first_non_finite_path(obj)
        literal = _cap(notes.non_finite[0], 30)
        where = f"field {_field_name(path)}: " if path else ""
        message = f"{literal} is not a finite number (JSON allows no NaN/Infinity)"
        raise InvalidInput(ReasonCode.NON_FINITE_NUMBER, where + message, [_error(path, message)], tx_id)
    if notes.duplicates:
        key, holder = notes.duplicates[0]
        path = "/" + _pointer_token(key) if holder is obj else ""
        message = f"key {_snippet(key)} appears more than once in a JSON object"
        raise InvalidInput(
            ReasonCode.DUPLICATE_KEY, f"duplicate key: {message}", [_error(path, message)], tx_id
        )


def _first_non_finite_path(obj: Any) -> str:
    """JSON Pointer of the first NaN/inf; iterative, so deep nesting is safe."""
    stack: list[tuple[str, Any]] = [("", obj)]
    while stack:
        path, node = stack.pop()
        if isinstance(node, float) and not math.isfinite(node):
            return path
        if isinstance(node, dict):
            stack.extend((f"{path}/{_pointer_token(k)}", v) for k, v in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend((f"{path}/{i}", v) for i, v in reversed(list(enumerate(node))))
    return ""


# ------------------------------------------------------------- on-demand requests

_IDENTIFIER = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")  # schemas: $defs/identifier
_REQUEST_FIELDS = ("transaction_id", "method", "kind")


def explain_request_record(transaction_id: str, method: str | None = None, kind: str | None = None) -> bytes:
    """The value of an ``explain.requests`` record (key it by ``transaction_id``), as
    ``validate_explain_request`` reads it: ``method`` and ``kind`` only when given (contributions
    is the default kind)."""
    value: dict[str, Any] = {"transaction_id": transaction_id}
    if method:
        value["method"] = method
    if kind and kind != CONTRIBUTIONS:
        value["kind"] = kind
    return orjson.dumps(value)


def validate_explain_request(
    value: bytes | None, key: bytes | None, methods: tuple[str, ...], max_bytes: int = DEFAULT_MAX_BYTES
) -> dict[str, Any]:
    """An ``explain.requests`` record (``{"transaction_id": …, "method": optional, "kind":
    optional}``, keyed by the transaction id), or ``InvalidInput``. The key matters: the record's
    partition is the one whose explainer owns the transaction's row, so a request keyed otherwise
    would wait forever. ``kind`` is one of ``KINDS`` (absent: contributions); a method names a
    SHAP method, so it goes with contributions only."""
    obj = _parse_precisely(_check_envelope(value, max_bytes))
    if not isinstance(obj, dict):
        raise InvalidInput(
            ReasonCode.NOT_OBJECT, f"value is valid JSON but {_describe(obj)}, not a JSON object"
        )
    txid, method = obj.get("transaction_id"), obj.get("method")
    errors = [_error("/" + _pointer_token(k), _UNKNOWN) for k in obj if k not in _REQUEST_FIELDS]
    if not isinstance(txid, str) or not _IDENTIFIER.fullmatch(txid):
        got = f"expected an identifier, got {_describe(txid)}"
        problem = _MISSING if "transaction_id" not in obj else got
        errors.insert(0, _error("/transaction_id", problem))
    if method is not None and method not in methods:
        errors.append(_error("/method", f"{_snippet(method)} is not one of {', '.join(methods)}"))
    kind = obj.get("kind", CONTRIBUTIONS)
    if kind not in KINDS:
        errors.append(_error("/kind", f"{_snippet(kind)} is not one of {', '.join(KINDS)}"))
    elif kind != CONTRIBUTIONS and method is not None:
        errors.append(_error("/method", f"a method is for contributions only, not for kind {kind}"))
    tx_id = _readable_id(txid)
    if errors:
        raise InvalidInput(ReasonCode.INVALID_REQUEST, _reason_from(errors), _capped(errors), tx_id)
    if key != str(txid).encode():
        shown = "no key" if key is None else f"key {key[:64]!r}"
        raise InvalidInput(
            ReasonCode.WRONG_KEY, f"{shown} is not the transaction_id {txid!r}; key requests by it", [], tx_id
        )
    return obj


# ------------------------------------------------------------------ schema errors

_MISSING = "required field is missing"
_UNKNOWN = "unknown field; the contract allows no extra fields"
_TIMESTAMP_HINT = "an RFC 3339 date-time with timezone, e.g. 2026-11-28T12:00:00.123Z"


@cache
def _collect_all_validator() -> contracts.Validator:
    """Like the fast validator but reports every error (slow path only)."""
    return contracts.compile_schema(_transaction().hot_schema, use_formats=False, fast_fail=False)


def _schema_errors(obj: dict[str, Any]) -> list[dict[str, str]]:
    """Every contract violation of ``obj``, as {"path", "message"} in field order."""
    schema = _transaction()
    by_field: dict[str, str] = {f: _MISSING for f in schema.required if f not in obj}
    try:
        _collect_all_validator()(obj)
        found: list[fastjsonschema.JsonSchemaValueException] = []
    except fastjsonschema.JsonSchemaValuesException as exc:
        found = exc.errors
    except fastjsonschema.JsonSchemaValueException as exc:
        found = [exc]
    for err in found:
        field = (err.name or "").removeprefix("data").removeprefix(".")
        if field in schema.properties and field not in by_field:  # first error per field wins
            by_field[field] = _rule_message(field, err)
    timestamp = obj.get("timestamp")
    if "timestamp" not in by_field and isinstance(timestamp, str):
        by_field.update(_timestamp_problem(timestamp))
    errors = [_error(f"/{f}", by_field[f]) for f in schema.properties if f in by_field]
    errors += [_error("/" + _pointer_token(k), _UNKNOWN) for k in obj if k not in schema.properties]
    return errors


def _rule_message(field: str, err: fastjsonschema.JsonSchemaValueException) -> str:
    """One readable sentence for a fastjsonschema error on a known field."""
    value, rule, limit = err.value, err.rule, err.rule_definition
    if field == "timestamp" and rule in ("pattern", "format"):
        return _timestamp_message(value)
    if rule == "type":
        return f"expected {_TYPE_WORDS.get(str(limit), str(limit))}, got {_describe(value)}"
    if rule == "exclusiveMinimum":
        return f"{_snippet(value)} is less than or equal to the minimum of {limit}"
    if rule == "maximum":
        return f"{_snippet(value)} is greater than the maximum of {limit}"
    if rule == "pattern":
        return f"{_snippet(value)} does not match the pattern {limit}"
    if rule == "enum":
        return f"{_snippet(value)} is not one of {', '.join(map(str, limit))}"
    return _cap(err.message.removeprefix("data."), 200)


_TYPE_WORDS = {"string": "a string", "number": "a number", "object": "an object", "null": "null"}


def _timestamp_message(value: Any) -> str:
    if not isinstance(value, str):
        return f"expected {_TIMESTAMP_HINT}, got {_describe(value)}"
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        return f"{_snippet(value)} is not {_TIMESTAMP_HINT}{_why(exc)}"
    if parsed.tzinfo is None:
        return f"{_snippet(value)} has no timezone; add 'Z' or an offset such as +01:00"
    return f"{_snippet(value)} is not {_TIMESTAMP_HINT}"


def _timestamp_problem(value: str) -> dict[str, str]:
    """Calendar check for a timestamp whose shape already matched the pattern."""
    try:
        datetime.fromisoformat(value)
    except ValueError as exc:
        return {"timestamp": f"{_snippet(value)} is not {_TIMESTAMP_HINT}{_why(exc)}"}
    return {}


def _why(exc: ValueError) -> str:
    """' (day is out of range for month)', but never echo the input back."""
    text = str(exc)
    return "" if "isoformat" in text or len(text) > 80 else f" ({text})"


def _reason_from(errors: list[dict[str, str]]) -> str:
    first = errors[0]
    reason = f"field {_field_name(first['path'])}: {first['message']}"
    if len(errors) > 1:
        reason += f" (and {len(errors) - 1} more problem{'s' if len(errors) > 2 else ''})"
    return reason


def _capped(errors: list[dict[str, str]]) -> list[dict[str, str]]:
    if len(errors) <= _MAX_ERRORS:
        return errors
    omitted = len(errors) - _MAX_ERRORS
    return [*errors[:_MAX_ERRORS], _error("", f"{omitted} more errors omitted")]


# ---------------------------------------------------------------------- helpers

_SNIFF_ID = re.compile(rb'"transaction_id"\s*:\s*"([A-Za-z0-9][A-Za-z0-9_.:-]{0,63})"')


def _sniff_id(raw: bytes) -> str | None:
    """transaction_id from bytes that could not be parsed (truncated JSON...)."""
    match = _SNIFF_ID.search(raw)
    return match.group(1).decode("ascii") if match else None


def _readable_id(value: Any) -> str | None:
    """A transaction_id safe to put in the DLQ record, or None."""
    if isinstance(value, str) and 0 < len(value) <= 128 and value.isprintable():
        return value
    return None


def _snippet(value: Any) -> str:
    """Short, ASCII-escaped rendering of an input value for messages."""
    if isinstance(value, str):
        text = ascii(value[:_SNIPPET_CHARS])
        return text if len(value) <= _SNIPPET_CHARS else f"{text}... ({len(value)} chars)"
    if value is None or isinstance(value, bool):
        return json.dumps(value)
    if isinstance(value, int | float):
        return _cap(repr(value), 40)
    return _describe(value)


def _describe(value: Any) -> str:
    """'string 'x'', 'number 5', 'an array of 3 items'... never a full repr."""
    if isinstance(value, dict):
        return f"an object with {len(value)} key{'s' * (len(value) != 1)}"
    if isinstance(value, list):
        return f"an array of {len(value)} item{'s' * (len(value) != 1)}"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return f"boolean {_snippet(value)}"
    kind = "string" if isinstance(value, str) else "number"
    return f"{kind} {_snippet(value)}"


def _pointer_token(key: str) -> str:
    """RFC 6901 token for a key, truncated and made encodable."""
    safe = key[:100].encode("utf-8", "backslashreplace").decode("utf-8")
    return safe.replace("~", "~0").replace("/", "~1")


def _field_name(path: str) -> str:
    """Render a JSON Pointer such as /amount as 'amount' for sentences; ASCII only."""
    name = path.removeprefix("/").replace("~1", "/").replace("~0", "~")
    return ascii(name[:_SNIPPET_CHARS]) if path else "(message)"


def _error(path: str, message: str) -> dict[str, str]:
    return {"path": _cap(path, 300), "message": _cap(message, 300)}


def _cap(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


# --------------------------------------------------------------------- DLQ record

DEFAULT_DLQ_VALUE_PREFIX = 4096  # Settings.dlq_value_prefix_bytes
DEFAULT_DLQ_KEY_PREFIX = 1024  # Settings.dlq_key_prefix_bytes


def build_dlq_record(
    value: bytes | None,
    key: bytes | None,
    exc: InvalidInput,
    topic: str,
    partition: int,
    offset: int,
    now: datetime | None = None,
    *,
    value_prefix_bytes: int = DEFAULT_DLQ_VALUE_PREFIX,
    key_prefix_bytes: int = DEFAULT_DLQ_KEY_PREFIX,
) -> dict[str, Any]:
    """The DLQ record (schemas/dlq.schema.json) for a rejection, bounded whatever the input.

    The value and key are described, not copied: length, SHA-256 and the first
    ``*_prefix_bytes`` bytes (base64), with a flag when that prefix is not all of it. A
    ~1 MB input copied whole became a ~1.4 MB record the broker refused, and the scorer
    stopped on it after every restart (issue 17). ``now`` must be timezone-aware.
    """
    return {
        "reason_code": exc.code,
        "reason": exc.reason,
        "errors": exc.errors,
        **_described("original_value", value, value_prefix_bytes),
        **_described("original_key", key, key_prefix_bytes),
        "source": {"topic": topic, "partition": partition, "offset": offset},
        "rejected_at": contracts.format_utc(now or datetime.now().astimezone()),
        "transaction_id": exc.transaction_id,
    }


def dlq_key(key: bytes | None, key_prefix_bytes: int = DEFAULT_DLQ_KEY_PREFIX) -> bytes | None:
    """The DLQ record's own Kafka key: the original key, cut to the same bound as in the record."""
    return None if key is None else key[:key_prefix_bytes]


def _described(field: str, data: bytes | None, prefix_bytes: int) -> dict[str, Any]:
    if data is None:
        return {
            f"{field}_b64": None,
            f"{field}_bytes": None,
            f"{field}_sha256": None,
            f"{field}_truncated": False,
        }
    return {
        f"{field}_b64": base64.b64encode(data[:prefix_bytes]).decode("ascii"),
        f"{field}_bytes": len(data),
        f"{field}_sha256": hashlib.sha256(data).hexdigest(),
        f"{field}_truncated": len(data) > prefix_bytes,
    }
