"""Short, analyst-readable reasons for a feature's contribution.

A reason describes the value the booster saw, with card context taken from the other
features of the same row ("amount 4,250.00 is 11× this card's median"), and says which way
it pushed the score.  Every feature of ``FEATURE_NAMES`` has a phrase; an unknown feature
falls back to ``name = value``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping

from app.model.features import CHANNEL_CODES, COUNTRY_CODES, MCC_CODES, NO_HISTORY_SECONDS, SMALL_AMOUNT

Row = Mapping[str, float]

_CHANNELS = {code: name for name, code in CHANNEL_CODES.items()}
_CHANNEL_WORDS = {"pos": "in store (card present)", "ecom": "online (card not present)", "atm": "ATM cash"}
_COUNTRIES = {code: country for country, code in COUNTRY_CODES.items()}
_MCCS = {code: mcc for mcc, code in MCC_CODES.items()}
_MCC_WORDS = {
    "5411": "grocery", "5812": "restaurant", "5814": "fast food", "5541": "fuel",
    "4121": "taxi / rideshare", "5912": "pharmacy", "5311": "department store",
    "5999": "misc retail", "4722": "travel agency", "5732": "electronics",
    "5815": "digital goods", "7995": "gambling", "4829": "money transfer",
    "6011": "ATM cash", "6051": "quasi-cash / crypto",
}  # fmt: skip
_MCC_GROUPS = {
    0: "unknown", 1: "everyday spend", 2: "general retail / travel",
    3: "cash and quasi-cash", 4: "high-risk digital",
}  # fmt: skip
_DAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def money(value: float) -> str:
    return f"{value:,.2f}"


def _times(ratio: float) -> str:
    return f"{ratio:.0f}×" if ratio >= 10 else f"{ratio:.1f}×"


def _count(n: float, one: str, many: str) -> str:
    return f"{n:.0f} {one if n == 1 else many}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    if seconds < 172_800:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86_400:.0f} days"


def _get(row: Row, name: str) -> float:
    value = row.get(name, math.nan)
    return math.nan if value is None else float(value)


def _amount(row: Row) -> str:
    amount, median, ratio = (
        _get(row, "amount"),
        _get(row, "card_median_amount"),
        _get(row, "amount_to_median"),
    )
    if not median > 0:
        return f"amount {money(amount)}, no earlier amounts for this card"
    if ratio >= 1.5:
        return f"amount {money(amount)} is {_times(ratio)} this card's median ({money(median)})"
    if ratio <= 0.67:
        return f"amount {money(amount)} is well below this card's median ({money(median)})"
    return f"amount {money(amount)} is close to this card's median ({money(median)})"


def _median(row: Row) -> str:
    median = _get(row, "card_median_amount")
    return (
        f"this card's median amount is {money(median)}" if median > 0 else "no earlier amounts for this card"
    )


def _cents(row: Row) -> str:
    cents = _get(row, "amount_cents")
    return "amount has no cents" if cents == 0 else f"amount has {_count(cents, 'cent', 'cents')}"


def _round(row: Row) -> str:
    if _get(row, "is_round_amount") >= 0.5:
        return f"round amount ({money(_get(row, 'amount'))})"
    return "amount is not a round number"


def _hour(row: Row) -> str:
    hour = _get(row, "local_hour")
    part = "night" if hour < 6 else "morning" if hour < 12 else "afternoon" if hour < 18 else "evening"
    return f"{hour:02.0f}:00-{hour:02.0f}:59 local time ({part})"


def _day(row: Row) -> str:
    day = int(_get(row, "day_of_week"))
    return f"on a {_DAYS[day]}" if 0 <= day < 7 else f"day of week {day}"


def _channel(row: Row) -> str:
    name = _CHANNELS.get(int(_get(row, "channel_code")), "other")
    return f"channel {name}: {_CHANNEL_WORDS.get(name, 'unknown channel')}"


def _mcc(row: Row) -> str:
    mcc = _MCCS.get(int(_get(row, "mcc_code")))
    return (
        f"merchant category {mcc} ({_MCC_WORDS[mcc]})" if mcc else "merchant category not in the known list"
    )


def _mcc_group(row: Row) -> str:
    return f"merchant type: {_MCC_GROUPS.get(int(_get(row, 'mcc_group')), 'unknown')}"


def _country(feature: str, words: str) -> Callable[[Row], str]:
    def phrase(row: Row) -> str:
        country = _COUNTRIES.get(int(_get(row, feature)))
        return f"{words} {country}" if country else f"{words} a country outside the known list"

    return phrase


def _flag(feature: str, yes: str, no: str) -> Callable[[Row], str]:
    return lambda row: yes if _get(row, feature) >= 0.5 else no


def _first_seen(row: Row) -> bool:
    return _get(row, "card_tx_count") == 0


def _unusual_country(row: Row) -> str:
    if _get(row, "country_unusual") >= 0.5:
        return "country differs from where this card is usually used"
    if _first_seen(row):
        return "no country history for this card yet"
    return "country is where this card is usually used"


def _new_device(row: Row) -> str:
    if _get(row, "new_device") >= 0.5:
        return "new device for this card"
    if _get(row, "has_device") >= 0.5:
        return "device already known for this card"
    return "no device id sent"


def _history(row: Row) -> str:
    n = _get(row, "card_tx_count")
    return (
        "first transaction seen for this card"
        if n == 0
        else f"card has {_count(n, 'earlier transaction', 'earlier transactions')}"
    )


def _since_last(row: Row) -> str:
    seconds = _get(row, "seconds_since_last")
    if seconds >= NO_HISTORY_SECONDS:
        return "first transaction seen for this card"
    return f"{_duration(seconds)} since this card's previous transaction"


def _window_count(feature: str, window: str) -> Callable[[Row], str]:
    def phrase(row: Row) -> str:
        earlier = _count(_get(row, feature), "earlier transaction", "earlier transactions")
        return f"{earlier} in the last {window}"

    return phrase


def _window_sum(feature: str, window: str) -> Callable[[Row], str]:
    def phrase(row: Row) -> str:
        spent = _get(row, feature)
        return f"{money(spent) if spent > 0 else 'nothing'} spent on this card in the last {window}"

    return phrase


def _small(row: Row) -> str:
    n = _get(row, "small_count_1h")
    small = f"small (< {money(SMALL_AMOUNT)})"
    return f"{_count(n, small + ' transaction', small + ' transactions')} in the last hour"


def _countries(row: Row) -> str:
    n = _get(row, "distinct_countries_24h")
    return f"{_count(n, 'country', 'countries')} in the last 24 hours, this one included"


def _ratio(row: Row) -> str:
    if not _get(row, "card_median_amount") > 0:
        return "no earlier amounts for this card to compare with"
    return _amount(row)


PHRASES: dict[str, Callable[[Row], str]] = {
    "amount": _amount,
    "log_amount": _amount,
    "amount_cents": _cents,
    "is_round_amount": _round,
    "local_hour": _hour,
    "day_of_week": _day,
    "channel_code": _channel,
    "mcc_code": _mcc,
    "mcc_group": _mcc_group,
    "country_code": _country("country_code", "transaction in"),
    "card_country_code": _country("card_country_code", "card issued in"),
    "is_foreign": _flag(
        "is_foreign", "country differs from the card's home country", "transaction in the card's home country"
    ),
    "country_unusual": _unusual_country,
    "has_device": _flag("has_device", "a device id was sent", "no device id sent"),
    "new_device": _new_device,
    "known_device_count": lambda row: (
        f"card has {_count(_get(row, 'known_device_count'), 'known device', 'known devices')}"
    ),
    "new_merchant": _flag(
        "new_merchant", "first purchase at this merchant", "merchant already used by this card"
    ),
    "card_tx_count": _history,
    "seconds_since_last": _since_last,
    "count_10m": _window_count("count_10m", "10 minutes"),
    "count_1h": _window_count("count_1h", "hour"),
    "sum_1h": _window_sum("sum_1h", "hour"),
    "count_24h": _window_count("count_24h", "24 hours"),
    "sum_24h": _window_sum("sum_24h", "24 hours"),
    "small_count_1h": _small,
    "distinct_countries_24h": _countries,
    "card_median_amount": _median,
    "amount_to_median": _ratio,
}


def describe(feature: str, row: Row) -> str:
    """What the value of ``feature`` in ``row`` means, without direction."""
    value = _get(row, feature)
    if math.isnan(value):
        return f"{feature} is missing"
    phrase = PHRASES.get(feature)
    if phrase is None:
        return f"{feature} = {value:g}"
    try:
        return phrase(row)
    except (ValueError, OverflowError):  # context feature missing or absurd: say the bare value
        return f"{feature} = {value:g}"


def reason(feature: str, row: Row, contribution: float) -> str:
    """``describe`` plus the direction of the contribution."""
    if contribution > 0:
        effect = "raises risk"
    elif contribution < 0:
        effect = "lowers risk"
    else:
        effect = "no effect on risk"
    return f"{describe(feature, row)} — {effect}"
