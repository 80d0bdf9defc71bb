"""The single feature function shared by training and serving.

Training (``build_matrix``) and the live scorer both call ``features_for`` and
``apply_transaction``; there is no second implementation, so there is no
train/serve skew.  Everything is event-time based: the wall clock is never read.

Card state is a plain JSON-serializable dict (it lives in a changelog-backed
table and is serialized with orjson on every transaction), so it is kept small
and bounded whatever the traffic:

==========  ==================================================================
key         meaning
==========  ==================================================================
``v``       layout version
``n``       transactions seen for the card (all time)
``last``    event time (epoch ms) of the latest transaction
``rt``      recent event times, epoch ms (last 24 h, at most ``RECENT_CAP``)
``ra``      recent amounts, parallel to ``rt``
``rc``      recent countries, parallel to ``rt``
``am``      last ``AMOUNT_CAP`` amounts (running median)
``cc``      country -> count, at most ``COUNTRY_CAP`` keys
``dv``      known devices, most recent last, at most ``DEVICE_CAP``
``mr``      known merchants, most recent last, at most ``MERCHANT_CAP``
``ids``     recent transaction ids (replay detection), at most ``ID_CAP``
==========  ==================================================================

Measured cost (Python 3.11, one core): ``features_for`` + ``apply_transaction``
take about 18-27 µs per transaction on a card with a full history (2-core box);
``tests/unit/test_features.py::test_speed_report`` prints the figure.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, date, datetime, timedelta
from typing import Any, TypeVar

import numpy as np
from tqdm import tqdm

CardState = dict[str, Any]
_T = TypeVar("_T")

STATE_VERSION = 1
RECENT_CAP = 64
AMOUNT_CAP = 50
COUNTRY_CAP = 16
DEVICE_CAP = 8
MERCHANT_CAP = 32
ID_CAP = 32

MS_10M = 600_000
MS_1H = 3_600_000
MS_24H = 86_400_000
NO_HISTORY_SECONDS = 1e7
SMALL_AMOUNT = 5.0
_EPOCH_DATE = date(1970, 1, 1)

FEATURE_NAMES: tuple[str, ...] = (
    "amount",
    "log_amount",
    "amount_cents",
    "is_round_amount",
    "local_hour",
    "day_of_week",
    "channel_code",
    "mcc_code",
    "mcc_group",
    "country_code",
    "card_country_code",
    "is_foreign",
    "country_unusual",
    "has_device",
    "new_device",
    "known_device_count",
    "new_merchant",
    "card_tx_count",
    "seconds_since_last",
    "count_10m",
    "count_1h",
    "sum_1h",
    "count_24h",
    "sum_24h",
    "small_count_1h",
    "distinct_countries_24h",
    "card_median_amount",
    "amount_to_median",
)

# Fixed integer encodings: the booster only ever sees plain numbers (no
# LightGBM categorical splits, which SHAP explanations mis-handle).  Codes are
# part of the model contract: append new entries, never renumber.
CHANNEL_CODES: dict[str, int] = {"pos": 1, "ecom": 2, "atm": 3}

# mcc -> (code, risk group).  Groups: 0 unknown, 1 everyday spend,
# 2 general retail / travel, 3 cash and quasi-cash, 4 high-risk digital.
MCC_TABLE: dict[str, tuple[int, int]] = {
    "5411": (1, 1),  # grocery
    "5812": (2, 1),  # restaurants
    "5814": (3, 1),  # fast food
    "5541": (4, 1),  # fuel
    "4121": (5, 1),  # taxi / rideshare
    "5912": (6, 1),  # pharmacy
    "5311": (7, 2),  # department stores
    "5999": (8, 2),  # misc retail
    "4722": (9, 2),  # travel agencies
    "5732": (10, 4),  # electronics
    "5815": (11, 4),  # digital goods
    "7995": (12, 4),  # gambling
    "4829": (13, 3),  # money transfer
    "6011": (14, 3),  # ATM cash
    "6051": (15, 3),  # quasi-cash / crypto
}
MCC_CODES: dict[str, int] = {mcc: code for mcc, (code, _) in MCC_TABLE.items()}
MCC_GROUPS: dict[str, int] = {mcc: group for mcc, (_, group) in MCC_TABLE.items()}

# Known countries with a fixed standard UTC offset in minutes.  The offset only
# feeds the local-hour feature, so ignoring DST is an accepted approximation.
COUNTRY_UTC_OFFSET_MIN: dict[str, int] = {
    "DE": 60, "FR": 60, "GB": 0, "US": -300, "ES": 60, "IT": 60, "NL": 60,
    "BE": 60, "AT": 60, "IE": 0, "PT": 0, "GR": 120, "CH": 60, "PL": 60,
    "HR": 60, "TR": 180, "TH": 420, "MX": -360, "JP": 540, "AE": 240,
    "CA": -300, "AU": 600, "IN": 330, "RU": 180, "NG": 60, "BR": -180,
    "CN": 480, "RO": 120, "UA": 120, "VN": 420, "ID": 420, "PH": 480,
    "MA": 60, "LU": 60, "SE": 60, "DK": 60,
}  # fmt: skip
KNOWN_COUNTRIES: tuple[str, ...] = tuple(COUNTRY_UTC_OFFSET_MIN)
COUNTRY_CODES: dict[str, int] = {c: i + 1 for i, c in enumerate(KNOWN_COUNTRIES)}
OTHER_CODE = 0


def parse_ts_ms(timestamp: str) -> int:
    """RFC 3339 timestamp -> epoch milliseconds (naive input is taken as UTC)."""
    parsed = datetime.fromisoformat(timestamp)  # 3.11 accepts the 'Z' suffix
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    # Rounding is exact: float seconds keep sub-microsecond precision here.
    return round(parsed.timestamp() * 1000)


_DAY_PREFIX: dict[int, str] = {}


def format_ts_ms(epoch_ms: int) -> str:
    """Epoch milliseconds -> ``YYYY-MM-DDTHH:MM:SS.mmmZ``."""
    day, rest = divmod(epoch_ms, MS_24H)
    prefix = _DAY_PREFIX.get(day)
    if prefix is None:  # the date part is cached: strftime per call is slow
        if len(_DAY_PREFIX) > 4096:
            _DAY_PREFIX.clear()
        prefix = (_EPOCH_DATE + timedelta(days=day)).isoformat() + "T"
        _DAY_PREFIX[day] = prefix
    seconds, millis = divmod(rest, 1000)
    minutes, sec = divmod(seconds, 60)
    return f"{prefix}{minutes // 60:02d}:{minutes % 60:02d}:{sec:02d}.{millis:03d}Z"


def empty_state() -> CardState:
    """A card that has never been seen."""
    return {
        "v": STATE_VERSION, "n": 0, "last": None, "rt": [], "ra": [], "rc": [],
        "am": [], "cc": {}, "dv": [], "mr": [], "ids": [],
    }  # fmt: skip


# What ``features_for`` reads of a card state: all but the replay bookkeeping (``ids``, ``src``).
FEATURE_STATE_KEYS: tuple[str, ...] = ("v", "n", "last", "rt", "ra", "rc", "am", "cc", "dv", "mr")


def features_state(state: Mapping[str, Any] | None) -> CardState | None:
    """The part of ``state`` that ``features_for`` reads: what a verdict carries so that an
    explainer recomputes the verdict's features exactly (issue 20: counterfactuals)."""
    if state is None:
        return None
    return {key: state[key] for key in FEATURE_STATE_KEYS}


def contains(state: Mapping[str, Any] | None, transaction_id: str) -> bool:
    """True when ``transaction_id`` was already applied to ``state``."""
    return state is not None and transaction_id in state["ids"]


def applied(state: Mapping[str, Any] | None, transaction_id: str, source: tuple[int, int] | None) -> bool:
    """True when a transaction already scored was also applied to ``state``.

    ``ids`` remembers only the last ``ID_CAP`` ids, so a replay after a crash that covers more
    of one card's transactions than that would apply the oldest again, and each re-applied id
    pushes the next one out of the window: the whole replay counted twice. A card's
    transactions all arrive on one partition (keyed by card), so the state also remembers the
    highest (partition, offset) applied: a record at or below it is a replay.
    """
    return contains(state, transaction_id) or (state is not None and _covers(state.get("src"), source))


def _covers(highest: list[int] | None, source: tuple[int, int] | None) -> bool:
    """``source`` is at or below ``highest`` on the same partition."""
    return source is not None and highest is not None and highest[0] == source[0] and source[1] <= highest[1]


def card_median(values: Sequence[float]) -> float:
    """The median of a card's recent amounts (``state["am"]``): what ``amount_to_median`` divides by."""
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return float(ordered[mid])
    return (ordered[mid - 1] + ordered[mid]) / 2.0


def _usual_country(counts: Mapping[str, int]) -> str | None:
    best: str | None = None
    best_count = 0
    for country, count in counts.items():
        if count > best_count:
            best, best_count = country, count
    return best


def _static_features(tx: Mapping[str, Any], ts: int) -> list[float]:
    """Features that depend on the transaction alone."""
    amount = float(tx["amount"])
    cents = round(amount * 100) % 100
    country = tx["country"]
    local_min = ts // 60_000 + COUNTRY_UTC_OFFSET_MIN.get(country, 0)
    local_hours = local_min // 60
    mcc = tx["mcc"]
    return [
        amount,
        math.log1p(amount),
        float(cents),
        1.0 if round(amount * 100) % 1000 == 0 else 0.0,
        float(local_hours % 24),
        float((local_hours // 24 + 3) % 7),  # 1970-01-01 was a Thursday; Monday=0
        float(CHANNEL_CODES.get(tx["channel"], OTHER_CODE)),
        float(MCC_CODES.get(mcc, OTHER_CODE)),
        float(MCC_GROUPS.get(mcc, OTHER_CODE)),
        float(COUNTRY_CODES.get(country, OTHER_CODE)),
        float(COUNTRY_CODES.get(tx["card_country"], OTHER_CODE)),
        1.0 if country != tx["card_country"] else 0.0,
    ]


def _window_features(state: Mapping[str, Any], ts: int, country: str) -> list[float]:
    """Velocity over the recent lists (sorted by event time, so bisect works)."""
    times, amounts = state["rt"], state["ra"]
    # Entries after ``ts`` arrived out of order and are in this one's future.
    hi = bisect_right(times, ts)
    lo_24h = bisect_right(times, ts - MS_24H, 0, hi)
    lo_1h = bisect_right(times, ts - MS_1H, lo_24h, hi)
    lo_10m = bisect_right(times, ts - MS_10M, lo_1h, hi)
    last_hour = amounts[lo_1h:hi]
    countries = set(state["rc"][lo_24h:hi])
    countries.add(country)
    return [
        float(hi - lo_10m),
        float(hi - lo_1h),
        float(sum(last_hour)),
        float(hi - lo_24h),
        float(sum(amounts[lo_24h:hi])),
        float(sum(1 for a in last_hour if a < SMALL_AMOUNT)),
        float(len(countries)),
    ]


def features_for(tx: Mapping[str, Any], state: Mapping[str, Any] | None) -> list[float]:
    """Feature vector (``FEATURE_NAMES`` order) from the state *before* ``tx``."""
    ts = parse_ts_ms(tx["timestamp"])
    row = _static_features(tx, ts)
    if state is None:
        state = empty_state()
    amount = row[0]
    device = tx.get("device_id")
    usual = _usual_country(state["cc"])
    last = state["last"]
    median = card_median(state["am"]) if state["am"] else 0.0
    row += [
        1.0 if usual is not None and usual != tx["country"] else 0.0,
        1.0 if device else 0.0,
        1.0 if device and device not in state["dv"] else 0.0,
        float(len(state["dv"])),
        1.0 if tx["merchant_id"] not in state["mr"] else 0.0,
        float(state["n"]),
        NO_HISTORY_SECONDS if last is None else max(0.0, (ts - last) / 1000.0),
    ]
    row += _window_features(state, ts, tx["country"])
    row += [median, amount / median if median > 0 else 1.0]
    return row


def _remember(items: list[_T], item: _T, cap: int) -> list[_T]:
    """Copy of an LRU list with ``item`` moved/added last, trimmed to ``cap``."""
    out = items.copy()
    if item in out:
        out.remove(item)
    out.append(item)
    return out[-cap:]


def _insert(items: list[_T], pos: int, item: _T, start: int) -> list[_T]:
    """Copy of ``items[start:]`` with ``item`` inserted at index ``pos``."""
    if pos >= len(items):
        out = items[start:]
        out.append(item)
        return out
    out = items.copy()
    out.insert(pos, item)
    return out[start:] if pos >= start else out[start + 1 :]


def _bump_country(counts: Mapping[str, int], country: str) -> dict[str, int]:
    out = dict(counts)
    if country not in out and len(out) >= COUNTRY_CAP:
        # Evict the rarest country so the map stays bounded; the usual
        # (most frequent) country is never the one dropped.
        rarest = min(out, key=out.__getitem__)
        del out[rarest]
    out[country] = out.get(country, 0) + 1
    return out


def apply_transaction(
    tx: Mapping[str, Any], state: CardState | None, source: tuple[int, int] | None = None
) -> CardState:
    """New card state after ``tx``; returns ``state`` itself if already applied.

    ``source`` is the record's (partition, offset) in ``transactions``: the state keeps the
    highest one (``src``) so that ``applied`` recognises a long replay (the scorer passes it;
    training, which has no offsets, does not).
    """
    if state is None:
        state = empty_state()
    tx_id = tx["transaction_id"]
    if tx_id in state["ids"]:
        return state  # replay after a crash: applying twice would double count
    ts = parse_ts_ms(tx["timestamp"])
    amount = float(tx["amount"])
    last = state["last"]
    newest = ts if last is None else max(ts, last)
    times = state["rt"]
    # Keep the recent lists sorted by event time: a late event is inserted in
    # place.  Then drop what fell out of 24 h and cap the length.
    pos = bisect_right(times, ts)
    start = max(bisect_right(times, newest - MS_24H), len(times) + 1 - RECENT_CAP)
    device = tx.get("device_id")
    return {
        "v": STATE_VERSION,
        "n": state["n"] + 1,
        "last": newest,
        "rt": _insert(times, pos, ts, start),
        "ra": _insert(state["ra"], pos, amount, start),
        "rc": _insert(state["rc"], pos, tx["country"], start),
        "am": (state["am"] + [amount])[-AMOUNT_CAP:],
        "cc": _bump_country(state["cc"], tx["country"]),
        "dv": _remember(state["dv"], device, DEVICE_CAP) if device else state["dv"],
        "mr": _remember(state["mr"], tx["merchant_id"], MERCHANT_CAP),
        "ids": (state["ids"] + [tx_id])[-ID_CAP:],
        **_source_after(state.get("src"), source),
    }


def _source_after(highest: list[int] | None, source: tuple[int, int] | None) -> dict[str, list[int]]:
    """The ``src`` entry after applying the record at ``source`` (absent while unknown)."""
    if source is None or _covers(highest, source):
        return {} if highest is None else {"src": highest}
    return {"src": [source[0], source[1]]}


def build_matrix(
    transactions: Iterable[Mapping[str, Any]], progress: bool = False
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Feature matrix for a time-ordered stream, plus the transactions in row order.

    Walks the stream keeping one state per card, calling exactly the serving
    functions, so training features cannot drift from live ones.
    """
    states: dict[str, CardState] = {}
    rows: list[list[float]] = []
    ordered: list[dict[str, Any]] = []
    for tx in tqdm(transactions, desc="features", unit="tx", disable=not progress):
        card = tx["card_id"]
        state = states.get(card)
        rows.append(features_for(tx, state))
        states[card] = apply_transaction(tx, state)
        ordered.append(dict(tx))
    matrix = np.asarray(rows, dtype=np.float64).reshape(len(rows), len(FEATURE_NAMES))
    return matrix, ordered
