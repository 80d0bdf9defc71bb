"""Deliberately malformed ``transactions`` messages, each with the reason code it must get.

Used by the CLI producer (``--bad-fraction``) and by tests that check every bad
message lands in the DLQ with a reason naming what was wrong. Each kind has
exactly one defect, built from an otherwise valid transaction, so the
expected reason code is unambiguous.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from app.records.validation import DEFAULT_MAX_BYTES, InvalidInput, ReasonCode, validate_transaction

__all__ = [
    "MALFORMED_KINDS",
    "MalformedCase",
    "base_transaction",
    "malformed_cases",
    "malformed_messages",
]


@dataclass(frozen=True)
class MalformedCase:
    """One bad message: ``mentions`` are words its DLQ reason must contain."""

    kind: str
    value: bytes | None
    code: str
    mentions: tuple[str, ...]


Built = tuple[bytes | None, tuple[str, ...]]
Builder = Callable[[dict[str, Any], random.Random, int], Built]

_EPOCH = datetime(2026, 11, 28, tzinfo=UTC)
_SENTINEL = "__fraudlens_raw_literal__"


def base_transaction(rng: random.Random) -> dict[str, Any]:
    """A random transaction that satisfies the contract."""
    moment = _EPOCH + timedelta(seconds=rng.randrange(86_400), milliseconds=rng.randrange(1000))
    return {
        "transaction_id": f"tx-{rng.getrandbits(48):012x}",
        "card_id": f"card-{rng.randrange(100_000):06d}",
        "merchant_id": f"m-{rng.randrange(5_000):05d}",
        "timestamp": moment.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        "amount": round(rng.uniform(1.0, 500.0), 2),
        "currency": rng.choice(["EUR", "USD", "GBP"]),
        "mcc": rng.choice(["5411", "5812", "5999", "6011", "4829"]),
        "country": rng.choice(["DE", "FR", "US", "GB"]),
        "card_country": rng.choice(["DE", "FR", "US", "GB"]),
        "channel": rng.choice(["pos", "ecom", "atm"]),
        "device_id": rng.choice([None, f"dev-{rng.getrandbits(24):06x}"]),
    }


# ------------------------------------------------------------------- builders
# Each returns (value bytes, words the reason must mention).


def _dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def _with(base: dict[str, Any], **changes: Any) -> bytes:
    return _dumps({**base, **changes})


def _with_raw(base: dict[str, Any], field: str, literal: bytes) -> bytes:
    """Serialise with ``field`` set to a raw JSON literal orjson cannot emit (NaN...)."""
    return _with(base, **{field: _SENTINEL}).replace(f'"{_SENTINEL}"'.encode(), literal)


def _without(base: dict[str, Any], field: str) -> bytes:
    return _dumps({k: v for k, v in base.items() if k != field})


def _missing_field(base: dict[str, Any], rng: random.Random, _: int) -> Built:
    required = [k for k in base if k != "device_id"]
    field = rng.choice(required)
    return _without(base, field), (field, "missing")


def _naive_timestamp(base: dict[str, Any], _rng: random.Random, _max: int) -> Built:
    naive = datetime.fromisoformat(base["timestamp"]).replace(tzinfo=None)
    return _with(base, timestamp=naive.isoformat(timespec="milliseconds")), ("timestamp", "timezone")


def _oversized(base: dict[str, Any], _rng: random.Random, max_bytes: int) -> Built:
    # Valid JSON except for its size, so only the size check can catch it.
    return _with(base, padding="x" * (max_bytes + 1024)), ("bytes", "limit")


def _duplicate_key(base: dict[str, Any], _rng: random.Random, _max: int) -> Built:
    # The dangerous kind: with "last wins" it would pass as a different amount.
    raw = _dumps(base)
    return raw[:-1] + b',"amount":' + _dumps(base["amount"] + 1) + b"}", ("amount", "more than once")


def _raw(literal: bytes, *mentions: str) -> Builder:
    return lambda base, _rng, _max: (_with_raw(base, "amount", literal), ("amount", *mentions))


def _fixed(value: bytes | None, *mentions: str) -> Builder:
    return lambda _base, _rng, _max: (value, mentions)


def _change(mentions: tuple[str, ...], **changes: Any) -> Builder:
    return lambda base, _rng, _max: (_with(base, **changes), mentions)


_NESTED = b"[" * 10_000 + b"]" * 10_000

# kind -> (expected reason code, builder)
_KINDS: dict[str, tuple[ReasonCode, Builder]] = {
    "garbage": (ReasonCode.NOT_JSON, _fixed(b"this is not json {card: 1", "JSON")),
    "truncated_json": (
        ReasonCode.NOT_JSON,
        lambda base, _rng, _max: (_dumps(base)[: len(_dumps(base)) // 2], ("JSON",)),
    ),
    "binary_not_utf8": (ReasonCode.NOT_UTF8, _fixed(b"\xff\xfe\x00\x81binary\xc3\x28", "UTF-8")),
    "empty_bytes": (ReasonCode.EMPTY, _fixed(b"", "empty")),
    "whitespace_only": (ReasonCode.EMPTY, _fixed(b" \r\n\t ", "whitespace")),
    "utf8_bom": (ReasonCode.NOT_JSON, lambda base, _rng, _max: (b"\xef\xbb\xbf" + _dumps(base), ("BOM",))),
    "json_array": (ReasonCode.NOT_OBJECT, lambda base, _rng, _max: (_dumps([base]), ("array",))),
    "json_string": (ReasonCode.NOT_OBJECT, _fixed(b'"transaction"', "string")),
    "nan_amount": (ReasonCode.NON_FINITE_NUMBER, _raw(b"NaN", "NaN")),
    "infinity_amount": (ReasonCode.NON_FINITE_NUMBER, _raw(b"Infinity", "Infinity")),
    "negative_infinity_amount": (ReasonCode.NON_FINITE_NUMBER, _raw(b"-Infinity", "Infinity")),
    "overflowing_amount": (ReasonCode.NON_FINITE_NUMBER, _raw(b"1e999", "1e999")),
    "negative_amount": (ReasonCode.AMOUNT_OUT_OF_RANGE, _change(("amount", "minimum"), amount=-5)),
    "zero_amount": (ReasonCode.AMOUNT_OUT_OF_RANGE, _change(("amount", "minimum"), amount=0)),
    "absurd_amount": (ReasonCode.AMOUNT_OUT_OF_RANGE, _change(("amount", "maximum"), amount=1e12)),
    "amount_as_string": (ReasonCode.AMOUNT_OUT_OF_RANGE, _change(("amount", "number"), amount="12.50")),
    "missing_field": (ReasonCode.SCHEMA, _missing_field),
    "unknown_field": (ReasonCode.SCHEMA, _change(("promo_code", "unknown"), promo_code="BLACKFRIDAY")),
    "card_id_as_number": (ReasonCode.SCHEMA, _change(("card_id", "string"), card_id=123456)),
    "bad_channel": (ReasonCode.SCHEMA, _change(("channel", "web"), channel="web")),
    "lowercase_currency": (ReasonCode.SCHEMA, _change(("currency", "eur"), currency="eur")),
    "bad_timestamp": (ReasonCode.SCHEMA, _change(("timestamp", "RFC 3339"), timestamp="28/11/2026 12:00")),
    "impossible_date": (
        ReasonCode.SCHEMA,
        _change(("timestamp", "2026-02-30"), timestamp="2026-02-30T10:00:00Z"),
    ),
    "timestamp_without_timezone": (ReasonCode.SCHEMA, _naive_timestamp),
    "oversized": (ReasonCode.OVERSIZED, _oversized),
    "deeply_nested": (ReasonCode.NOT_JSON, _fixed(_NESTED, "nested")),
    "duplicate_key": (ReasonCode.DUPLICATE_KEY, _duplicate_key),
}

MALFORMED_KINDS: tuple[str, ...] = tuple(_KINDS)


# ------------------------------------------------------------------ public API


def malformed_cases(
    count: int,
    seed: int,
    valid_source: Iterable[dict[str, Any]] | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> list[MalformedCase]:
    """``count`` bad messages cycling through every kind (order shuffled by ``seed``).

    Each is built from the next transaction of ``valid_source`` (which may be
    infinite; consumed lazily, one per message) or a random one once it runs
    out. ``max_bytes`` must match the consumer's limit so 'oversized' is.
    """
    rng = random.Random(seed)
    kinds = list(MALFORMED_KINDS)
    rng.shuffle(kinds)
    bases = _bases(valid_source, rng)
    cases = []
    for i in range(count):
        kind = kinds[i % len(kinds)]
        code, build = _KINDS[kind]
        value, mentions = build(next(bases), rng, max_bytes)
        cases.append(MalformedCase(kind, value, code.value, mentions))
    return cases


def malformed_messages(
    count: int,
    seed: int,
    valid_source: Iterable[dict[str, Any]] | None = None,
    *,
    max_bytes: int = DEFAULT_MAX_BYTES,
) -> list[tuple[bytes | None, str]]:
    """(value bytes, expected reason code) pairs; see ``malformed_cases``."""
    return [(c.value, c.code) for c in malformed_cases(count, seed, valid_source, max_bytes=max_bytes)]


def _bases(valid_source: Iterable[dict[str, Any]] | None, rng: random.Random) -> Iterator[dict[str, Any]]:
    for item in valid_source or ():
        yield _checked(item)
    while True:
        yield base_transaction(rng)


def _checked(item: dict[str, Any]) -> dict[str, Any]:
    """Normalise via JSON (datetimes -> strings) and insist the base is valid,
    otherwise the 'one defect per message' promise and expected codes break."""
    raw = orjson.dumps(item)
    try:
        return validate_transaction(raw)
    except InvalidInput as exc:
        raise ValueError(f"valid_source yielded an invalid transaction: {exc}") from None
