"""Seeded synthetic card traffic with labelled fraud.

Legitimate traffic comes from a population of cards with habits (home country,
favourite merchants, amount scale, active hours, a usual device, occasional
trips).  Fraud (about 1.5 % of rows) is injected from four patterns whose
transactions are queued on a heap and merged into the time-ordered stream:

* ``card_testing``: a burst of tiny ecom charges within minutes on one card;
* ``account_takeover``: ecom from a new device, foreign country, large amount;
* ``compromised_merchant``: a few merchants where stolen cards get odd amounts;
* ``night_cash_out``: several large ATM withdrawals at 1-5 am local time.

Legitimate look-alikes (bursts of in-app purchases, travellers on new devices
and at foreign ATMs) keep the patterns from being trivially separable.  All
randomness comes from one ``random.Random(seed)``: the same seed, count and
start always give the same stream.
"""

from __future__ import annotations

import heapq
import math
import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, NamedTuple

from app.model.features import COUNTRY_UTC_OFFSET_MIN, format_ts_ms

# Home countries of the card population: (country, weight, billing currency).
HOME_COUNTRIES = (
    ("DE", 22, "EUR"), ("FR", 16, "EUR"), ("GB", 15, "GBP"), ("US", 12, "USD"),
    ("ES", 9, "EUR"), ("IT", 9, "EUR"), ("NL", 7, "EUR"), ("BE", 4, "EUR"),
    ("AT", 3, "EUR"), ("IE", 3, "EUR"),
)  # fmt: skip
# Repetition encodes how popular a trip destination is.
TRAVEL_COUNTRIES = (
    "ES", "ES", "ES", "IT", "IT", "FR", "FR", "GR", "GR", "PT", "PT", "HR", "CH",
    "TR", "TR", "TH", "MX", "JP", "AE", "US", "US", "GB", "DE", "NL", "PL",
)  # fmt: skip
FRAUD_COUNTRIES = ("RU", "NG", "BR", "CN", "RO", "UA", "VN", "ID", "PH", "MA")
CASH_OUT_COUNTRIES = (*FRAUD_COUNTRIES, "TR", "TH", "MX", "ES", "IT")
ECOM_COUNTRIES = ("US", "US", "IE", "NL", "GB", "DE", "FR", "LU", "SE", "CN")
# mcc -> (typical amount, lognormal sigma); the log is taken once below.
_MCC_TYPICAL = {
    "5411": (32, 0.75), "5812": (30, 0.6), "5814": (11, 0.5), "5541": (55, 0.35),
    "5311": (55, 0.8), "5999": (30, 0.95), "5912": (18, 0.6), "5732": (160, 0.95),
    "4121": (19, 0.5), "5815": (9, 0.8), "4722": (380, 0.8), "7995": (35, 1.1),
    "4829": (150, 1.0), "6051": (120, 1.1), "6011": (110, 0.6),
}  # fmt: skip
MCC_AMOUNTS = {mcc: (math.log(typ), sig) for mcc, (typ, sig) in _MCC_TYPICAL.items()}
CHANNEL_MCCS: dict[str, tuple[tuple[str, ...], tuple[int, ...]]] = {
    "pos": (("5411", "5812", "5814", "5541", "5311", "5999", "5912", "5732", "4121"),
            (30, 18, 12, 12, 8, 8, 6, 3, 3)),
    "ecom": (("5999", "5311", "5815", "4121", "5732", "4722", "7995", "4829", "6051"),
             (30, 15, 15, 10, 10, 6, 6, 5, 3)),
    "atm": (("6011",), (1,)),
}  # fmt: skip
ECOM_FRAUD_MCCS = frozenset({"5732", "4829", "7995", "4722", "6051", "5999"})
TESTING_MCCS = frozenset({"5999", "5815", "4829", "7995"})


# Local-hour acceptance weights: 6 night, 3 morning, 9 day, 6 evening hours.
HOUR_PROFILES = tuple(
    (night,) * 6 + (morning,) * 3 + (day,) * 9 + (evening,) * 6
    for night, morning, day, evening in (
        (0.03, 0.5, 1.0, 0.6),  # daytime
        (0.15, 0.2, 0.7, 1.0),  # evening / night owl
        (0.05, 1.0, 1.0, 0.2),  # early bird
    )
)


class Merchant(NamedTuple):
    merchant_id: str
    mcc: str
    country: str
    channel: str


@dataclass(slots=True)
class Card:
    card_id: str
    country: str
    currency: str
    scale: float
    hour_weights: tuple[float, ...]
    p_ecom: float
    p_atm: float
    device: str
    favourites: dict[str, list[Merchant]]
    trip_country: str = ""
    trip_until: int = 0

    def where(self, now_ms: int) -> str:
        """Country the card is physically in at ``now_ms``."""
        return self.trip_country if now_ms < self.trip_until else self.country


@dataclass(slots=True)
class Population:
    cards: list[Card]
    pools: dict[tuple[str, str], list[Merchant]]
    ecom: list[Merchant]
    testing: list[Merchant]
    risky_ecom: list[Merchant]
    compromised: list[Merchant]
    micro: list[Merchant]

    def pool(self, channel: str, country: str) -> list[Merchant]:
        return self.ecom if channel == "ecom" else self.pools[(channel, country)]


def _popular(rng: random.Random, pool: list[Merchant], k: int) -> list[Merchant]:
    """Pick ``k`` with a bias to the head of ``pool``: a few merchants are popular."""
    return [pool[int(len(pool) * rng.random() ** 1.6)] for _ in range(k)]


def _merchants(rng: random.Random, channel: str, countries: list[str], count: int) -> list[Merchant]:
    mccs, weights = CHANNEL_MCCS[channel]
    prefix = {"pos": "m", "ecom": "web", "atm": "atm"}[channel]
    out = []
    for i, mcc in enumerate(rng.choices(mccs, weights, k=count)):
        country = countries[i % len(countries)]
        out.append(Merchant(f"{prefix}-{country}-{i:05d}", mcc, country, channel))
    return out


def _build_pools(rng: random.Random) -> dict[tuple[str, str], list[Merchant]]:
    homes = {c for c, _, _ in HOME_COUNTRIES}
    pools: dict[tuple[str, str], list[Merchant]] = {}
    for country in sorted(homes | set(TRAVEL_COUNTRIES) | set(FRAUD_COUNTRIES)):
        size = 150 if country in homes else 40 if country in TRAVEL_COUNTRIES else 15
        pools[("pos", country)] = _merchants(rng, "pos", [country], size)
        pools[("atm", country)] = _merchants(rng, "atm", [country], max(6, size // 5))
    return pools


def _new_card(
    rng: random.Random, index: int, pools: dict[tuple[str, str], list[Merchant]], ecom: list[Merchant]
) -> Card:
    country, _, currency = rng.choices(HOME_COUNTRIES, [w for _, w, _ in HOME_COUNTRIES])[0]
    favourites = {
        "pos": _popular(rng, pools[("pos", country)], rng.randint(5, 12)),
        "ecom": _popular(rng, ecom, rng.randint(2, 6)),
        "atm": _popular(rng, pools[("atm", country)], rng.randint(1, 2)),
    }
    return Card(
        card_id=f"card-{index:05d}",
        country=country,
        currency=currency,
        scale=rng.lognormvariate(0.0, 0.45),
        hour_weights=rng.choice(HOUR_PROFILES),
        p_ecom=rng.uniform(0.10, 0.45),
        p_atm=rng.uniform(0.02, 0.08),
        device=f"dev-{rng.getrandbits(40):010x}",
        favourites=favourites,
    )


def build_population(rng: random.Random, n_cards: int) -> Population:
    """Merchants, cards with habits, and the compromised merchants."""
    pools = _build_pools(rng)
    ecom = _merchants(rng, "ecom", list(ECOM_COUNTRIES + FRAUD_COUNTRIES[:4]), 300)
    cards = [_new_card(rng, i, pools, ecom) for i in range(n_cards)]
    homes = [c for c, _, _ in HOME_COUNTRIES]
    compromised = _popular(rng, ecom, 2)
    for _ in range(4):
        compromised += _popular(rng, pools[("pos", rng.choice(homes))], 1)
    return Population(
        cards=cards,
        pools=pools,
        ecom=ecom,
        testing=[m for m in ecom if m.mcc in TESTING_MCCS],
        risky_ecom=[m for m in ecom if m.mcc in ECOM_FRAUD_MCCS],
        compromised=compromised,
        micro=[m for m in ecom if m.mcc == "5815"],
    )


DEFAULT_START = datetime(2026, 1, 1, tzinfo=UTC)
PATTERNS = ("card_testing", "account_takeover", "compromised_merchant", "night_cash_out")
MAX_AMOUNT = 1_000_000.0
MINUTE_MS = 60_000
HOUR_MS = 3_600_000

# Per legitimate transaction: probability of starting each (fraud) episode.
# Sized so that, with the episode lengths below, ~1.5 % of rows are fraud.
P_CARD_TESTING = 0.0005
P_MICRO_BURST = 0.002  # legitimate look-alike of card testing
P_TAKEOVER = 0.0018
P_COMPROMISED = 0.0035
P_CASH_OUT = 0.0009
P_TRIP = 0.004
P_FAVOURITE = 0.75
TX_PER_CARD_PER_DAY = 3.0

# Relative transaction intensity by UTC hour (traffic is mostly European).
UTC_HOUR_INTENSITY = (
    0.25, 0.15, 0.10, 0.08, 0.10, 0.20, 0.45, 0.75, 1.00, 1.10, 1.20, 1.30,
    1.40, 1.35, 1.25, 1.20, 1.25, 1.35, 1.40, 1.30, 1.10, 0.85, 0.60, 0.40,
)  # fmt: skip


class LabeledTransaction(NamedTuple):
    """One generated transaction (contract dict) with its ground truth."""

    transaction: dict[str, Any]
    is_fraud: bool
    pattern: str | None


# A pending event on the merge heap: (time ms, tiebreak, body, pattern).
_Pending = tuple[int, int, dict[str, Any], str | None]


def _to_ms(moment: datetime) -> int:
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return round(moment.timestamp() * 1000)


def restamp(tx: dict[str, Any], now: datetime) -> dict[str, Any]:
    """Copy of ``tx`` with ``timestamp`` set to ``now`` (live replay).

    The transaction id is kept, so ids stay unique within one seeded stream.
    """
    out = dict(tx)
    out["timestamp"] = format_ts_ms(_to_ms(now))
    return out


def _money(value: float) -> float:
    return round(min(max(value, 0.01), MAX_AMOUNT), 2)


class _Simulator:
    """Holds the mutable simulation state; ``run`` yields the stream."""

    def __init__(self, count: int, seed: int, start: datetime | None) -> None:
        self.rng = random.Random(seed)
        self.count = count
        n_cards = min(20_000, max(300, count // 40))
        # Built fresh per stream: cards mutate during the run (trips, devices).
        self.pop = build_population(self.rng, n_cards)
        self.now = _to_ms(start or DEFAULT_START)
        self.rate_per_ms = n_cards * TX_PER_CARD_PER_DAY / 86_400_000
        self.heap: list[_Pending] = []
        self.tiebreak = 0

    # ---------------------------------------------------------------- stream
    def run(self) -> Iterator[LabeledTransaction]:
        rng = self.rng
        seq = 0
        while seq < self.count:
            hour = (self.now // HOUR_MS) % 24
            step = rng.expovariate(self.rate_per_ms * UTC_HOUR_INTENSITY[hour])
            next_ms = self.now + max(1, int(step))
            while self.heap and self.heap[0][0] <= next_ms and seq < self.count:
                ts, _, body, pattern = heapq.heappop(self.heap)
                seq += 1
                yield self._emit(seq, ts, body, pattern)
            if seq >= self.count:
                return
            self.now = next_ms
            body = self._legit()
            self._maybe_start_episode()
            seq += 1
            yield self._emit(seq, self.now, body, None)

    def _emit(self, seq: int, ts: int, body: dict[str, Any], pattern: str | None) -> LabeledTransaction:
        tx_id = f"tx-{seq:06d}-{self.rng.getrandbits(24):06x}"
        tx = {"transaction_id": tx_id, "timestamp": format_ts_ms(ts), **body}
        return LabeledTransaction(tx, pattern is not None, pattern)

    def _push(
        self, ts: int, pattern: str | None, card: Card, shop: Merchant, amount: float,
        device: str | None,
    ) -> None:  # fmt: skip
        """Queue one transaction of an episode for time ``ts``."""
        self.tiebreak += 1
        body = self._body(card, shop, _money(amount), device)
        heapq.heappush(self.heap, (ts, self.tiebreak, body, pattern))

    # ------------------------------------------------------------ legitimate
    def _pick_card(self) -> Card:
        rng = self.rng
        cards = self.pop.cards
        card = cards[0]
        for _ in range(6):  # rejection sampling on the card's active hours
            card = cards[int(len(cards) * rng.random() ** 1.3)]
            offset = COUNTRY_UTC_OFFSET_MIN.get(card.where(self.now), 0)
            local_hour = ((self.now // MINUTE_MS + offset) // 60) % 24
            if rng.random() < card.hour_weights[local_hour]:
                break
        return card

    def _legit(self) -> dict[str, Any]:
        rng = self.rng
        card = self._pick_card()
        if card.trip_until <= self.now and rng.random() < P_TRIP:
            card.trip_country = rng.choice(TRAVEL_COUNTRIES)
            card.trip_until = self.now + rng.randint(2, 9) * 86_400_000
        where = card.where(self.now)
        away = where != card.country
        roll = rng.random()
        channel = "ecom" if roll < card.p_ecom else "pos"
        if channel == "pos" and roll < card.p_ecom + card.p_atm * (3 if away else 1):
            channel = "atm"  # travellers need local cash
        merchant = self._merchant_for(card, channel, where)
        mu, sigma = MCC_AMOUNTS[merchant.mcc]
        amount = rng.lognormvariate(mu, sigma) * card.scale
        if channel == "atm":
            amount = max(20.0, round(amount / 20.0) * 20.0)
        device = None
        if channel == "ecom":
            device = card.device
            # New phone or laptop (half become the usual), or a hotel computer.
            if rng.random() < (0.15 if away else 0.03):
                device = f"dev-{rng.getrandbits(40):010x}"
                if not away and rng.random() < 0.5:
                    card.device = device
        return self._body(card, merchant, _money(amount), device)

    def _merchant_for(self, card: Card, channel: str, where: str) -> Merchant:
        rng = self.rng
        at_home = where == card.country
        if channel == "ecom" or at_home:
            favourites = card.favourites[channel]
            if favourites and rng.random() < P_FAVOURITE:
                return rng.choice(favourites)
        return _popular(rng, self.pop.pool(channel, where), 1)[0]

    @staticmethod
    def _body(card: Card, merchant: Merchant, amount: float, device: str | None) -> dict[str, Any]:
        return {
            "card_id": card.card_id,
            "amount": amount,
            "currency": card.currency,
            "merchant_id": merchant.merchant_id,
            "mcc": merchant.mcc,
            "country": merchant.country,
            "card_country": card.country,
            "channel": merchant.channel,
            "device_id": device,
        }

    # ----------------------------------------------------------------- fraud
    def _maybe_start_episode(self) -> None:
        roll = self.rng.random()
        if roll < P_MICRO_BURST:
            self._micro_burst()
        elif (roll := roll - P_MICRO_BURST) < P_CARD_TESTING:
            self._card_testing()
        elif (roll := roll - P_CARD_TESTING) < P_TAKEOVER:
            self._account_takeover()
        elif (roll := roll - P_TAKEOVER) < P_COMPROMISED:
            self._compromised_merchant()
        elif roll - P_COMPROMISED < P_CASH_OUT:
            self._night_cash_out()

    def _victim(self) -> tuple[Card, str]:
        """A random card and a device the fraudster uses (never the card's)."""
        return self.rng.choice(self.pop.cards), f"dev-{self.rng.getrandbits(40):010x}"

    def _micro_burst(self) -> None:
        """Legitimate: a few in-app purchases in minutes, own device and shops."""
        rng = self.rng
        card = rng.choice(self.pop.cards)
        shop = rng.choice(card.favourites["ecom"] + self.pop.micro)
        ts = self.now + rng.randint(0, 30 * MINUTE_MS)
        for _ in range(rng.randint(3, 8)):
            ts += rng.randint(20_000, 3 * MINUTE_MS)
            self._push(ts, None, card, shop, rng.choice((0.99, 1.99, 2.99, 4.99)), card.device)

    def _card_testing(self) -> None:
        rng = self.rng
        card, device = self._victim()
        shops = [rng.choice(self.pop.testing) for _ in range(2)]
        ts = self.now + rng.randint(0, 30 * MINUTE_MS)
        for _ in range(rng.randint(5, 15)):
            ts += rng.randint(3_000, 60_000)
            amount = 1.0 if rng.random() < 0.2 else rng.uniform(0.5, 4.99)
            self._push(ts, "card_testing", card, rng.choice(shops), amount, device)
        if rng.random() < 0.5:  # the card works: cash in on it at once
            shop = rng.choice(self.pop.risky_ecom)
            amount = rng.uniform(150.0, 900.0)
            ts += rng.randint(60_000, 10 * MINUTE_MS)
            self._push(ts, "card_testing", card, shop, amount, device)

    def _account_takeover(self) -> None:
        rng = self.rng
        card, device = self._victim()
        shops = [m for m in self.pop.risky_ecom if m.country != card.country]
        ts = self.now + rng.randint(0, 2 * HOUR_MS)
        for _ in range(rng.randint(1, 3)):
            shop = rng.choice(shops)
            amount = min(8000.0, max(150.0, rng.lognormvariate(math.log(600), 0.8)))
            self._push(ts, "account_takeover", card, shop, amount, device)
            ts += rng.randint(2 * MINUTE_MS, 30 * MINUTE_MS)

    def _compromised_merchant(self) -> None:
        rng = self.rng
        (card, device), shop = self._victim(), rng.choice(self.pop.compromised)
        amount = float(rng.randint(15, 120) * 10)  # suspiciously round
        if rng.random() < 0.5:
            amount = rng.choice((111.11, 222.22, 333.33, 444.44, 555.55, 999.99))
        ts = self.now + rng.randint(0, 10 * MINUTE_MS)
        used = device if shop.channel == "ecom" else None
        self._push(ts, "compromised_merchant", card, shop, amount, used)

    def _night_cash_out(self) -> None:
        rng = self.rng
        card, _ = self._victim()
        country = card.country if rng.random() < 0.3 else rng.choice(CASH_OUT_COUNTRIES)
        offset = COUNTRY_UTC_OFFSET_MIN.get(country, 0) * MINUTE_MS
        local = self.now + offset + rng.randint(0, 6 * HOUR_MS)
        day_start = local - local % 86_400_000
        start = day_start + HOUR_MS + rng.randint(0, 3 * HOUR_MS - 1)  # 01:00-03:59
        if start < local:
            start += 86_400_000
        ts = start - offset
        atms = [rng.choice(self.pop.pool("atm", country)) for _ in range(2)]
        for _ in range(rng.randint(3, 6)):
            amount = float(rng.randint(10, 50) * 20)
            self._push(ts, "night_cash_out", card, rng.choice(atms), amount, None)
            ts += rng.randint(MINUTE_MS, 8 * MINUTE_MS)


def generate(count: int, seed: int, start: datetime | None = None) -> Iterator[LabeledTransaction]:
    """``count`` labelled transactions ordered by timestamp (reproducible)."""
    if count < 0:
        raise ValueError("count must be >= 0")
    return _Simulator(count, seed, start).run()


def generate_transactions(count: int, seed: int, start: datetime | None = None) -> Iterator[dict[str, Any]]:
    """Just the transaction dicts of ``generate``."""
    return (item.transaction for item in generate(count, seed, start))
