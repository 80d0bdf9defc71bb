"""Synthetic generator: reproducible, contract-conformant, realistic fraud mix."""

from __future__ import annotations

import re
import time
from collections import Counter
from datetime import UTC, datetime, timedelta, timezone

import pytest

from app.model.features import COUNTRY_UTC_OFFSET_MIN, parse_ts_ms
from app.model.generator import PATTERNS, LabeledTransaction, generate, generate_transactions, restamp

ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}$")
TS_RE = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$")
FIELDS = {
    "transaction_id", "card_id", "timestamp", "amount", "currency", "merchant_id",
    "mcc", "country", "card_country", "channel", "device_id",
}  # fmt: skip
CURRENCY = {"GB": "GBP", "US": "USD"}


@pytest.fixture(scope="module")
def stream() -> list[LabeledTransaction]:
    start = time.perf_counter()
    items = list(generate(20_000, seed=123))
    elapsed = time.perf_counter() - start
    print(f"\ngenerator: {len(items) / elapsed:,.0f} rows/s")
    return items


def test_same_seed_gives_identical_stream() -> None:
    assert list(generate(3_000, seed=5)) == list(generate(3_000, seed=5))


def test_different_seed_gives_different_stream() -> None:
    first = [item.transaction for item in generate(500, seed=5)]
    second = [item.transaction for item in generate(500, seed=6)]
    assert first != second
    assert {t["transaction_id"] for t in first}.isdisjoint(t["transaction_id"] for t in second)


def test_generate_transactions_matches_generate() -> None:
    assert list(generate_transactions(1_000, seed=9)) == [i.transaction for i in generate(1_000, seed=9)]


def test_count_and_start_time() -> None:
    start = datetime(2026, 11, 28, 12, 0, tzinfo=UTC)
    items = list(generate(250, seed=1, start=start))
    assert len(items) == 250
    assert parse_ts_ms(items[0].transaction["timestamp"]) >= start.timestamp() * 1000
    naive = list(generate(250, seed=1, start=start.replace(tzinfo=None)))
    assert naive == items  # a naive start is taken as UTC
    assert list(generate(0, seed=1)) == []


def _check_contract(tx: dict[str, object]) -> None:
    assert set(tx) == FIELDS
    for key in ("transaction_id", "card_id", "merchant_id"):
        value = tx[key]
        assert isinstance(value, str) and ID_RE.match(value), (key, value)
    timestamp = tx["timestamp"]
    assert isinstance(timestamp, str) and TS_RE.match(timestamp)
    amount = tx["amount"]
    assert isinstance(amount, float) and 0 < amount <= 1_000_000 and round(amount, 2) == amount
    assert isinstance(tx["mcc"], str) and re.fullmatch(r"\d{4}", tx["mcc"])
    for key in ("country", "card_country"):
        assert isinstance(tx[key], str) and re.fullmatch(r"[A-Z]{2}", str(tx[key]))
    assert tx["currency"] == CURRENCY.get(str(tx["card_country"]), "EUR")
    assert tx["channel"] in {"pos", "ecom", "atm"}
    device = tx["device_id"]
    assert device is None or (isinstance(device, str) and ID_RE.match(device))
    if tx["channel"] == "ecom":
        assert device is not None
    if tx["channel"] == "atm":
        assert tx["mcc"] == "6011"


def test_every_transaction_satisfies_the_contract(stream: list[LabeledTransaction]) -> None:
    for item in stream:
        _check_contract(item.transaction)
        assert item.is_fraud == (item.pattern is not None)
        assert item.pattern is None or item.pattern in PATTERNS


def test_ordered_by_time_with_unique_ids(stream: list[LabeledTransaction]) -> None:
    times = [parse_ts_ms(item.transaction["timestamp"]) for item in stream]
    assert times == sorted(times)
    assert len({item.transaction["transaction_id"] for item in stream}) == len(stream)
    assert times[-1] - times[0] > 86_400_000  # spans simulated days


def test_fraud_rate_and_every_pattern_present(stream: list[LabeledTransaction]) -> None:
    rate = sum(item.is_fraud for item in stream) / len(stream)
    counts = Counter(item.pattern for item in stream if item.pattern)
    print(f"\nfraud rate {rate:.2%}: {dict(counts)}")
    assert 0.01 <= rate <= 0.025
    assert set(counts) == set(PATTERNS)


def _local_hour(tx: dict[str, object]) -> int:
    offset = COUNTRY_UTC_OFFSET_MIN[str(tx["country"])]
    return ((parse_ts_ms(str(tx["timestamp"])) // 60_000 + offset) // 60) % 24


def test_patterns_look_like_their_description(stream: list[LabeledTransaction]) -> None:
    by_pattern: dict[str, list[dict[str, object]]] = {p: [] for p in PATTERNS}
    for item in stream:
        if item.pattern:
            by_pattern[item.pattern].append(item.transaction)
    testing = by_pattern["card_testing"]
    assert all(t["channel"] == "ecom" for t in testing)
    assert sum(float(str(t["amount"])) < 5 for t in testing) > 0.8 * len(testing)
    for tx in by_pattern["account_takeover"]:
        assert tx["channel"] == "ecom" and tx["country"] != tx["card_country"]
        assert float(str(tx["amount"])) >= 150
    for tx in by_pattern["night_cash_out"]:
        assert tx["channel"] == "atm" and 1 <= _local_hour(tx) < 5
    assert len({t["merchant_id"] for t in by_pattern["compromised_merchant"]}) <= 6


def test_restamp_copies_with_new_time_and_same_id() -> None:
    tx = next(generate_transactions(1, seed=4))
    now = datetime(2026, 11, 28, 12, 0, 0, 123_456, tzinfo=UTC)
    fresh = restamp(tx, now)
    assert fresh["timestamp"] == "2026-11-28T12:00:00.123Z"
    assert fresh["transaction_id"] == tx["transaction_id"]
    assert tx["timestamp"] != fresh["timestamp"]  # original untouched
    same_instant = now.astimezone(timezone(timedelta(hours=2)))
    assert restamp(tx, same_instant)["timestamp"] == fresh["timestamp"]
    assert restamp(tx, now.replace(tzinfo=None))["timestamp"] == fresh["timestamp"]  # naive = UTC
    later = restamp(tx, now + timedelta(seconds=1))
    assert later["timestamp"] == "2026-11-28T12:00:01.123Z"
