"""Hostile records on every topic an outsider (or a misconfigured client) can write, against the
real embedded broker: every role keeps running, every valid transaction gets its verdict, every
rejected one exactly one bounded DLQ record (issue 17, point 1)."""

from __future__ import annotations

import contextlib
import hashlib
from collections import Counter
from dataclasses import dataclass
from typing import Any

import orjson
from confluent_kafka import Producer
from hypothesis import HealthCheck, Phase, given, seed, settings
from hypothesis import strategies as st

from app.model.generator import generate_transactions
from app.records.contracts import validate_message
from tests.integration.harness import REPO, Stack, start_relay, wait_until

# What the embedded broker accepts as one record (measured: a 1,048,000-byte value is taken,
# 1,048,576 is refused with MSG_SIZE_TOO_LARGE: its limit is 1 MiB per record batch).
BROKER_MAX_VALUE = 1_048_000


def _hostile_producer(stack: Stack, compression: str = "none") -> Producer:
    """A client that lets the broker, not itself, decide what is too large."""
    return Producer({
        "bootstrap.servers": stack.bootstrap, "acks": "all", "linger.ms": 20,
        "message.max.bytes": 20_000_000, "compression.type": compression,
    })  # fmt: skip


def _send(
    producer: Producer,
    topic: str,
    records: list[tuple[bytes | None, bytes | None]],
    headers: list[tuple[str, str | bytes | None]] | None = None,
) -> list[Any]:
    """Produce and flush; the delivered messages (partition and offset known), in order."""
    delivered: list[Any] = []
    failures: list[Any] = []

    def acked(err: Any, message: Any) -> None:
        (failures if err else delivered).append(err or message)

    for key, value in records:
        producer.produce(topic, key=key, value=value, headers=headers or None, on_delivery=acked)
        producer.poll(0)
    assert producer.flush(60) == 0, "producer did not flush"
    assert not failures, failures[:3]
    return delivered


def test_huge_and_inflating_transactions_get_bounded_dlq_records(stack: Stack) -> None:
    """A value near the broker's limit, and an lz4 batch whose values inflate far past it, each
    get one DLQ record that fits; the scorer stays up and scores what follows."""
    scorer = stack.start_worker("scorer")
    transactions = list(generate_transactions(20, seed=171))
    plain = _send(_hostile_producer(stack), "transactions", [(b"card-big", b"x" * BROKER_MAX_VALUE)])
    # 4 MB of zeros per value compresses to ~16 KB: the broker takes the batch.
    inflating = _send(_hostile_producer(stack, "lz4"), "transactions", [(b"card-zip", bytes(4_000_000))] * 3)
    stack.produce_transactions(transactions)

    verdicts, dlq = stack.reader("verdicts"), stack.reader("transactions.dlq")
    verdicts.read_until(lambda m: len(m) >= 20, 120, "20 verdicts after the huge records")
    records = dlq.read_until(lambda m: len(m) >= 4, 60, "4 DLQ records")
    assert scorer.alive(), scorer.tail()
    sources = sorted((r["source"]["partition"], r["source"]["offset"]) for r in dlq.values())
    assert sources == sorted((m.partition(), m.offset()) for m in plain + inflating)
    for message, record in zip(records, dlq.values(), strict=True):
        validate_message("dlq", record)
        assert len(message.value()) < 64_000, len(message.value())
        assert record["reason_code"] == "oversized"
        assert record["original_value_truncated"] is True
        assert record["original_value_bytes"] in (BROKER_MAX_VALUE, 4_000_000)
    assert {orjson.loads(m.value())["transaction_id"] for m in verdicts.messages} == {
        tx["transaction_id"] for tx in transactions
    }
    wait_until(lambda: scorer.alive(), 1, "the scorer to be alive")


# ------------------------------------------------------------------ the property (acceptance)

EXAMPLES = REPO / "schemas" / "examples"
TEMPLATES: dict[str, dict[str, Any]] = {
    "transactions": orjson.loads((EXAMPLES / "transaction.valid.json").read_bytes()),
    "explain.requests": {"transaction_id": "tx-hostile-0", "method": "tree"},
    "verdicts": orjson.loads((EXAMPLES / "verdict.valid.json").read_bytes()),
    "explain.high": orjson.loads((EXAMPLES / "explain_request.valid.json").read_bytes()),
    "explanation.updates": orjson.loads((EXAMPLES / "explanation.valid.json").read_bytes()),
}
TEMPLATES["explain.normal"] = {**TEMPLATES["explain.high"], "priority": "normal"}
TEMPLATES["explain.low"] = {**TEMPLATES["explain.high"], "priority": "low"}
HOSTILE_TOPICS = tuple(TEMPLATES)
# Values of a type no field of these contracts allows where they are put (by construction, so
# the oracle does not ask the code under test what is valid). Nulls only where null is wrong.
WRONG_FOR_STRING: tuple[Any, ...] = (123, 1.5, True, [], {"a": 1}, ["x"])
WRONG_FOR_NUMBER: tuple[Any, ...] = ("12.5", True, [], {"a": 1}, None)
NULLABLE = {"device_id"}
REQUEST_WRONG = {"transaction_id": (*WRONG_FOR_STRING, None, ""), "method": (*WRONG_FOR_STRING, "nonsense")}
HUGE = 1_040_000  # a value this size, with a short key and a few headers, fits the broker's limit
INFLATING = 4_000_000  # zeros: a ~16 KB lz4 batch whose value is four times the broker's limit
KINDS = (
    "tombstone", "empty", "whitespace", "binary", "not_utf8", "not_json", "not_object",
    "wrong_type", "missing_field", "unknown_field", "wrong_key", "huge", "inflating", "nested",
)  # fmt: skip


@dataclass
class Hostile:
    topic: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, str | bytes | None]]
    kind: str


def _wrong_value(draw: Any, topic: str, field: str, template: dict[str, Any]) -> Any:
    if topic == "explain.requests":
        return draw(st.sampled_from(REQUEST_WRONG[field]))
    if isinstance(template[field], str) or field in NULLABLE:
        pool = WRONG_FOR_STRING + (() if field in NULLABLE else (None,))
        return draw(st.sampled_from(pool))
    return draw(st.sampled_from(WRONG_FOR_NUMBER))


@st.composite
def hostile_record(draw: Any, topic: str, kind: str) -> Hostile:
    """One record of ``kind`` no contract allows (on transactions and explain.requests: certainly
    invalid, by construction), with random headers."""
    template = dict(TEMPLATES[topic])
    template["transaction_id"] = f"tx-hostile-{draw(st.integers(0, 10**9))}"
    key_of = "card_id" if topic == "transactions" else "transaction_id"
    key: bytes | None = str(template[key_of]).encode()
    value: bytes | None
    if kind == "tombstone":
        value = None
    elif kind == "empty":
        value = b""
    elif kind == "whitespace":
        value = b" \r\n\t "
    elif kind == "binary":
        value = draw(st.binary(min_size=1, max_size=300)) + b"\xff"
    elif kind == "not_utf8":
        value = orjson.dumps(template)[:-2] + b'\xc3\x28"}'
    elif kind == "not_json":
        value = orjson.dumps(template)[: draw(st.integers(1, 40))]
    elif kind == "not_object":
        value = orjson.dumps(draw(st.sampled_from([[template], "a string", 42, None, True, []])))
    elif kind == "wrong_type":
        field = draw(st.sampled_from(sorted(REQUEST_WRONG if topic == "explain.requests" else template)))
        value = orjson.dumps({**template, field: _wrong_value(draw, topic, field, template)})
    elif kind == "missing_field":
        required = ["transaction_id"] if topic == "explain.requests" else sorted(template)
        if topic == "transactions":
            required.remove("device_id")
        gone = draw(st.sampled_from(required))
        value = orjson.dumps({k: v for k, v in template.items() if k != gone})
    elif kind == "unknown_field":
        value = orjson.dumps({**template, "transaction_id": [1, 2], "surprise": "x" * 100})
    elif kind == "wrong_key":
        key, value = (
            draw(st.sampled_from([b"somebody-else", b"\xff\x00", b"k" * 5000])),
            orjson.dumps(template),
        )
    elif kind == "huge":
        value = b'{"transaction_id": "' + b"x" * HUGE + b'"}'
    elif kind == "inflating":
        value = bytes(INFLATING)
    else:
        value = b"[" * 100_000 + b"]" * 100_000
    headers = draw(
        st.lists(st.tuples(st.sampled_from(["h", "", "\u00e9"]), st.binary(max_size=50)), max_size=3)
    )
    return Hostile(topic, key, value, headers, kind)


def _rounds() -> st.SearchStrategy[list[Hostile]]:
    """One record of every kind per round, spread over every topic (a drawn assignment), sent in a
    drawn order: each round covers every kind and topic, the rounds vary the pairs."""

    def of(topics: list[str]) -> st.SearchStrategy[list[Hostile]]:
        records = [hostile_record(topics[i % len(topics)], kind) for i, kind in enumerate(KINDS)]
        return st.tuples(*records).flatmap(lambda drawn: st.permutations(list(drawn)))

    return st.permutations(HOSTILE_TOPICS).flatmap(of)


def test_no_record_of_any_shape_or_size_stops_a_role(stack: Stack) -> None:
    """Issue 17 acceptance: hostile records on every topic an outsider or a misconfigured client
    can write, with valid transactions alongside. Afterwards every valid transaction has its
    verdict, every rejected transaction and on-demand request exactly one DLQ record (by source
    offset), the explainer still explains, and no role (scorer, explainer, relay) died."""
    scorer = stack.start_worker("scorer")
    explainer = stack.start_worker("explainer", FRAUDLENS_EXPLAIN_STATS_EVERY_S="5")
    relay = start_relay(stack).process
    roles = (scorer, explainer, relay)
    pids = [role.pid for role in roles]
    plain, zipped = _hostile_producer(stack), _hostile_producer(stack, "lz4")
    readers = {
        t: stack.reader(t)
        for t in ("verdicts", "transactions.dlq", "explain.requests.dlq", "explanation.updates")
    }
    valid_pool = iter(generate_transactions(2000, seed=1717))
    expected_dlq: dict[str, set[tuple[int, int]]] = {"transactions.dlq": set(), "explain.requests.dlq": set()}
    wanted_verdicts: set[str] = set()
    tried: Counter[tuple[str, str]] = Counter()
    digest = hashlib.sha256()

    @settings(
        max_examples=25, deadline=None, database=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: the stack carries on between examples
        suppress_health_check=list(HealthCheck),
    )  # fmt: skip
    @seed(20261205)  # a fixed seed: the same 25 rounds on every run (CI stability)
    @given(_rounds())
    def one_round(records: list[Hostile]) -> None:
        valid = [next(valid_pool) for _ in range(3)]
        asked = valid[0]["transaction_id"]  # asked for on demand: must end explained, whatever the rules
        _send(plain, "explain.requests", [(asked.encode(), orjson.dumps({"transaction_id": asked}))])
        for record in records:
            producer = zipped if record.kind == "inflating" else plain
            tried[record.topic, record.kind] += 1
            digest.update(record.topic.encode() + (record.key or b"") + (record.value or b"")[:100])
            (message,) = _send(producer, record.topic, [(record.key, record.value)], record.headers)
            if record.topic in ("transactions", "explain.requests"):
                expected_dlq[f"{record.topic}.dlq"].add((message.partition(), message.offset()))
        stack.produce_transactions(valid)
        wanted_verdicts.update(tx["transaction_id"] for tx in valid)
        _await_outcomes(readers, wanted_verdicts, expected_dlq, asked, roles)

    one_round()
    assert len(tried) > len(KINDS) * 3, tried  # rounds spread the kinds over different topics
    rounds = sum(tried.values()) // len(KINDS)
    dlq = {topic: len(sources) for topic, sources in expected_dlq.items()}
    sample = digest.hexdigest()[:12]  # the same on every run: the seed fixes the rounds
    print(f"\n{rounds} rounds ({sample}), {len(tried)} (topic, kind) pairs, DLQ records expected {dlq}")
    assert "that no contract allows" in explainer.log.read_text(errors="replace")  # counted, logged
    for topic, sources in expected_dlq.items():
        got = Counter(_source(m) for m in readers[topic].read_to_end())
        assert {s for s, n in got.items() if n > 1} == set(), f"{topic}: more than one record for a source"
        assert set(got) == sources, f"{topic}: {set(got) ^ sources}"
    assert all(role.alive() for role in roles) and [role.pid for role in roles] == pids
    assert "Traceback" not in scorer.log.read_text(errors="replace"), scorer.tail()


def _source(message: Any) -> tuple[int, int]:
    source = orjson.loads(message.value())["source"]
    return source["partition"], source["offset"]


def _await_outcomes(
    readers: dict[str, Any],
    wanted_verdicts: set[str],
    expected_dlq: dict[str, set[tuple[int, int]]],
    asked: str,
    roles: tuple[Any, ...],
) -> None:
    missing: dict[str, Any] = {}

    def settled() -> bool:
        for role in roles:
            assert role.alive(), f"{role.name} died:\n{role.tail()}"
        verdicts = {m.key() for m in readers["verdicts"].poll(0.1)}  # hostile keys are not all UTF-8
        missing["verdicts"] = {txid for txid in wanted_verdicts if txid.encode() not in verdicts}
        for topic, wanted in expected_dlq.items():
            missing[topic] = wanted - {_source(m) for m in readers[topic].poll(0.1)}
        missing["explanation"] = not _explained(readers["explanation.updates"].poll(0.1), asked)
        return not any(missing.values())

    try:
        wait_until(settled, 90, "verdicts, DLQ records and the on-demand explanation", interval=0)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; missing: {missing}") from None


def _explained(updates: list[Any], txid: str) -> bool:
    for message in updates:
        if message.key() == txid.encode():
            with contextlib.suppress(ValueError, TypeError, AttributeError):  # hostile, not ours
                if orjson.loads(message.value()).get("status") in ("complete", "failed"):
                    return True
    return False
