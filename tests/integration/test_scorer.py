"""The scorer against the real embedded broker: verdicts, DLQ, idempotent re-sends, crashes."""

from __future__ import annotations

import math
import random
import shutil
from collections import Counter
from typing import Any

import numpy as np
import orjson

from app.model.features import FEATURE_NAMES, features_for
from app.model.generator import generate_transactions
from app.records.contracts import validate_message
from app.records.malformed import malformed_messages
from tests.integration.harness import (
    Process,
    Stack,
    SteadyProducer,
    TopicReader,
    committed_to_end,
    diagnose_missing,
    wait_until,
)
from tests.replay import current_booster, transaction_of


def _verdicts_by_id(messages: list[Any]) -> dict[str, list[bytes]]:
    by_id: dict[str, list[bytes]] = {}
    for message in messages:
        by_id.setdefault(message.key().decode(), []).append(message.value())
    return by_id


def settled(stack: Stack, *outputs: TopicReader) -> None:
    """Once the scorer has committed every input, read its outputs to their end: all it will
    write for them is there (it commits only offsets whose records are acked)."""
    wait_until(
        lambda: committed_to_end(stack, stack.app_id, "transactions"), 120, "the scorer to commit every input"
    )
    for output in outputs:
        output.read_to_end()


def test_valid_and_malformed_inputs(stack: Stack) -> None:
    """1,000 valid + 100 malformed: exactly 1,000 verdicts and 100 DLQ records with reasons."""
    stack.start_worker("scorer")
    transactions = list(generate_transactions(1000, seed=11))
    bad = malformed_messages(100, seed=3)
    messages = [(tx["card_id"].encode(), orjson.dumps(tx)) for tx in transactions]
    messages += [(f"bad-{i}".encode(), value) for i, (value, _) in enumerate(bad)]
    random.Random(5).shuffle(messages)
    stack.produce(messages)

    verdicts, dlq = stack.reader("verdicts"), stack.reader("transactions.dlq")
    verdicts.read_until(lambda m: len(m) >= 1000, 120, "1,000 verdicts")
    dlq.read_until(lambda m: len(m) >= 100, 60, "100 DLQ records")
    settled(stack, verdicts, dlq)  # and nothing more: the scorer has committed every input

    assert len(verdicts.messages) == 1000
    by_id = _verdicts_by_id(verdicts.messages)
    assert set(by_id) == {tx["transaction_id"] for tx in transactions}
    for value in verdicts.values():
        validate_message("verdict", value)
    assert len(dlq.messages) == 100
    for record in dlq.values():
        validate_message("dlq", record)
        assert len(record["reason"]) > 10, record
    codes = Counter(record["reason_code"] for record in dlq.values())
    assert Counter(code for _, code in bad) == codes
    _assert_replays_recompute(stack, verdicts.values())


def _assert_replays_recompute(stack: Stack, verdicts: list[dict[str, Any]]) -> None:
    """Issue 20: each verdict recomputes from what it carries. The transaction rebuilt from the
    verdict alone, its features from ``replay.card_state`` by the serving feature function, scored
    by a Booster loaded from the registry's files: the verdict's features and raw score exactly."""
    booster = current_booster(stack.models_dir)
    rows, with_history = [], 0
    for verdict in verdicts:
        tx = transaction_of(verdict)
        state = verdict["replay"]["card_state"]
        with_history += state is not None
        row = features_for(tx, state)
        assert [None if math.isnan(x) else x for x in row] == [
            verdict["features"][n] for n in FEATURE_NAMES
        ], tx
        rows.append(row)
    assert booster.predict(np.asarray(rows), raw_score=True).tolist() == [v["raw_score"] for v in verdicts]
    assert with_history >= len(verdicts) // 2, "most verdicts' cards had a history"


def test_resent_transactions_get_identical_verdicts(stack: Stack) -> None:
    stack.start_worker("scorer")
    transactions = list(generate_transactions(200, seed=12))
    stack.produce_transactions(transactions)
    verdicts = stack.reader("verdicts")
    verdicts.read_until(lambda m: len(m) >= 200, 120, "first verdicts")
    stack.produce_transactions(transactions[:50])
    verdicts.read_until(lambda m: len(m) >= 250, 60, "re-sent verdicts")
    settled(stack, verdicts)
    assert len(verdicts.messages) == 250
    for txid, values in _verdicts_by_id(verdicts.messages).items():
        assert len(set(values)) == 1, f"{txid} got differing verdicts"
    resent = {tx["transaction_id"] for tx in transactions[:50]}
    counts = {txid: len(v) for txid, v in _verdicts_by_id(verdicts.messages).items()}
    assert all(counts[t] == 2 for t in resent) and sum(counts.values()) == 250
    # no second row: one key per transaction in the predictions table, holding the first verdict
    rows = _table_rows(stack, "predictions", {tx["transaction_id"].encode() for tx in transactions})
    assert len(rows) == 200
    sent = {m.key(): m.value() for m in verdicts.messages}
    assert all(rows[key] == sent[key] for key in rows)


def _kill_mid_stream(stack: Stack, scorer: Process, transactions: list[dict[str, Any]]) -> None:
    stack.produce_transactions(transactions[:1500])
    verdicts = stack.reader("verdicts")
    verdicts.read_until(lambda m: len(m) >= 300, 120, "verdicts before the kill")
    stack.produce_transactions(transactions[1500:])
    scorer.kill()  # SIGKILL while the second half is in flight


def _assert_every_verdict_once_in_content(stack: Stack, transactions: list[dict[str, Any]]) -> None:
    verdicts = stack.reader("verdicts")
    wanted = {tx["transaction_id"] for tx in transactions}
    try:
        verdicts.read_until(
            lambda m: wanted <= set(_verdicts_by_id(m)), 180, "a verdict for every transaction"
        )
    except AssertionError as exc:
        seen = set(_verdicts_by_id(verdicts.messages))
        raise AssertionError(f"{exc}: {diagnose_missing(stack, wanted, seen)}") from None
    for txid, values in _verdicts_by_id(verdicts.messages).items():
        assert len(set(values)) == 1, f"duplicates of {txid} differ"


def _table_rows(stack: Stack, table: str, keys: set[bytes]) -> dict[bytes, bytes]:
    """The table as its changelog holds it (last value per key), once every key is there."""
    changelog = stack.reader(f"{stack.app_id}-{table}-changelog")
    changelog.read_until(lambda m: keys <= {x.key() for x in m}, 60, f"every key in {table}")
    return {m.key(): m.value() for m in changelog.messages}


def _run_crash_test(stack: Stack, wipe: bool) -> None:
    scorer = stack.start_worker("scorer")
    transactions = list(generate_transactions(3000, seed=21 if wipe else 22))
    _kill_mid_stream(stack, scorer, transactions)
    # Transactions keep arriving while the scorer is down, recovers its tables and resumes.
    load = SteadyProducer(stack, rate=100, seed=23 if wipe else 24)
    load.start()
    if wipe:
        shutil.rmtree(stack.root / "data" / "scorer")
    stack.start_worker("scorer")
    restarted_at = len(load.sent)
    verdicts = stack.reader("verdicts")

    def live_again(messages: list[Any]) -> bool:  # and 200 sent since the restart began
        later = {txid for _, txid in load.sent[restarted_at:]}
        return len(later) >= 200 and any(m.key().decode() in later for m in messages)

    verdicts.read_until(live_again, 180, "the restarted scorer to score transactions sent meanwhile")
    load.stop.set()
    load.join(30)
    transactions += [load.transactions[txid] for _, txid in load.sent]
    _assert_every_verdict_once_in_content(stack, transactions)
    _table_rows(stack, "predictions", {tx["transaction_id"].encode() for tx in transactions})
    per_card = Counter(tx["card_id"].encode() for tx in transactions)
    activity = {k: orjson.loads(v) for k, v in _table_rows(stack, "card_activity", set(per_card)).items()}
    for card, count in per_card.items():
        assert activity[card]["n"] == count, f"card {card!r}: state counts {activity[card]['n']} of {count}"


def test_scorer_sigkill_restart_keeps_data_dir(stack: Stack) -> None:
    _run_crash_test(stack, wipe=False)


def test_scorer_sigkill_restart_wiped_data_dir(stack: Stack) -> None:
    _run_crash_test(stack, wipe=True)


def test_scorer_keeps_running_on_bad_input_only(stack: Stack) -> None:
    """A stream of nothing but garbage neither stops nor slows the agent."""
    scorer = stack.start_worker("scorer")
    stack.produce((b"k", value) for value, _ in malformed_messages(300, seed=9))
    stack.reader("transactions.dlq").read_until(lambda m: len(m) >= 300, 60, "300 DLQ records")
    stack.produce_transactions(generate_transactions(10, seed=99))
    stack.reader("verdicts").read_until(lambda m: len(m) >= 10, 60, "verdicts after garbage")
    wait_until(scorer.alive, 1, "scorer alive")


def _assigned_partitions(process: Process) -> list[int] | None:
    """The partitions in the scorer's last 'assigned transactions partitions [..]' log line."""
    lines = [line for line in process.tail(400).splitlines() if "assigned transactions partitions" in line]
    if not lines:
        return None
    inside = lines[-1].split("[", 1)[1].split("]", 1)[0]
    return [int(p) for p in inside.split(",") if p.strip()]


def test_two_scorers_share_the_partitions_and_take_over_after_a_sigkill(stack: Stack) -> None:
    """A second scorer joins under load (partitions move, tables recover from the changelogs on
    the new owner), then the first is SIGKILLed (its partitions move after the session timeout):
    every transaction still has one verdict value, and every card's state counts each of its
    transactions once, whichever scorer held the card."""
    first = stack.start_worker("scorer", FRAUDLENS_INSTANCE_ID="s1")
    load = SteadyProducer(stack, rate=150, seed=31)
    load.start()
    verdicts = stack.reader("verdicts")
    verdicts.read_until(lambda m: len(m) >= 300, 120, "verdicts from the first scorer")
    second = stack.start_worker("scorer", FRAUDLENS_INSTANCE_ID="s2")
    wait_until(
        lambda: (
            (a := _assigned_partitions(first)) is not None
            and (b := _assigned_partitions(second)) is not None
            and sorted(a + b) == list(range(6))
            and a
            and b
        ),
        120,
        "the partitions split between the two scorers",
    )
    shared_at = len(load.sent)
    verdicts.read_until(lambda m: len(m) >= shared_at + 300, 120, "verdicts from both scorers")
    first.kill()
    wait_until(
        lambda: _assigned_partitions(second) == list(range(6)), 120, "the survivor to own every partition"
    )
    killed_at = len(load.sent)
    verdicts.read_until(lambda m: len(m) >= killed_at + 300, 120, "verdicts after the takeover")
    sent = load.finish_and_expect_verdicts(stack, verdicts, timeout=120)
    transactions = [load.transactions[txid] for txid in sent]
    _assert_every_verdict_once_in_content(stack, transactions)
    per_card = Counter(tx["card_id"].encode() for tx in transactions)
    activity = {k: orjson.loads(v) for k, v in _table_rows(stack, "card_activity", set(per_card)).items()}
    for card, count in per_card.items():
        assert activity[card]["n"] == count, f"card {card!r}: state counts {activity[card]['n']} of {count}"
