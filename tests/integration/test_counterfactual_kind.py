"""The counterfactual kind end to end on the real broker (issue 20): scorer and explainer with
counterfactuals routed for deny and review verdicts.

The oracle does not call the search: each proposal is applied to the transaction, the card's
transactions as produced are walked by ``build_matrix`` with the changed one last, and a Booster
loaded from the registry's files scores it against the thresholds of its ``meta.json``."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import orjson

from app.model.features import build_matrix
from app.model.generator import generate_transactions
from app.records.contracts import validate_message
from tests.integration.harness import REPO, Stack, TopicReader, wait_until
from tests.integration.test_explainer import group_caught_up
from tests.replay import current_booster

KINDS_ON = {"FRAUDLENS_EXPLAIN_COUNTERFACTUAL_DECISIONS": '["deny","review"]'}
KINDS_OFF = {"FRAUDLENS_EXPLAIN_COUNTERFACTUAL_DECISIONS": "[]"}  # none routed by itself: on demand only
ORDER = {"approve": 0, "review": 1, "deny": 2}


def by_kind(updates: TopicReader) -> dict[tuple[str, str], list[dict[str, Any]]]:
    out: dict[tuple[str, str], list[dict[str, Any]]] = defaultdict(list)
    for update in updates.values():
        out[(update["transaction_id"], update.get("kind", "contributions"))].append(update)
    return out


def complete(updates: TopicReader, kind: str) -> set[str]:
    return {
        txid for (txid, k), seq in by_kind(updates).items() if k == kind and seq[-1]["status"] == "complete"
    }


class Oracle:
    def __init__(self, models_dir: Path) -> None:
        self.booster = current_booster(models_dir)
        version = (models_dir / "CURRENT").read_text().strip()
        meta = json.loads((models_dir / version / "meta.json").read_text())
        self.review, self.deny = float(meta["thresholds"]["review"]), float(meta["thresholds"]["deny"])

    def decision(self, history: list[dict[str, Any]], tx: dict[str, Any]) -> str:
        matrix, _ = build_matrix([*history, tx])
        p = float(self.booster.predict(matrix[-1:])[0])
        return "deny" if p >= self.deny else "review" if p >= self.review else "approve"


def test_every_flagged_verdict_gets_a_verified_counterfactual(stack: Stack, models_dir: Path) -> None:
    """Deny and review verdicts end with a complete counterfactual (pending → calculating →
    complete, its own row beside the contributions one); every proposal gets its stated decision
    from the oracle; approve verdicts get none; re-sent transactions are not searched again."""
    stack.start_worker("scorer")
    stack.start_worker("explainer", **KINDS_ON)
    transactions = list(generate_transactions(300, seed=41))
    stack.produce_transactions(transactions)
    verdicts = stack.reader("verdicts")
    verdicts.read_until(lambda m: len(m) >= 300, 120, "300 verdicts")
    flagged = {v["transaction_id"]: v for v in verdicts.values() if v["decision"] != "approve"}
    assert len(flagged) >= 5, f"only {len(flagged)} flagged verdicts: too few for the claims below"
    everyone = {tx["transaction_id"] for tx in transactions}
    updates = stack.reader("explanation.updates")
    try:
        updates.read_until(
            lambda _: complete(updates, "counterfactual") >= set(flagged)
            and complete(updates, "contributions") >= everyone,
            240, "every contributions and counterfactual explanation",
        )  # fmt: skip
    except AssertionError as exc:
        last = {key: seq[-1]["status"] for key, seq in by_kind(updates).items()}
        counts = Counter((kind, status) for (_, kind), status in last.items())
        missing = set(flagged) - complete(updates, "counterfactual")
        raise AssertionError(
            f"{exc}: last statuses by kind {dict(counts)}; counterfactuals missing for {missing}"
        ) from None

    oracle = Oracle(models_dir)
    history: dict[str, list[dict[str, Any]]] = defaultdict(list)
    before: dict[str, list[dict[str, Any]]] = {}
    for tx in transactions:
        before[tx["transaction_id"]] = list(history[tx["card_id"]])
        history[tx["card_id"]].append(tx)
    by_tx = {tx["transaction_id"]: tx for tx in transactions}
    sequences = by_kind(updates)
    assert {txid for txid, kind in sequences if kind == "counterfactual"} == set(flagged)
    proposals = 0
    for (txid, kind), sequence in sequences.items():
        assert [u["status"] for u in sequence] == ["pending", "calculating", "complete"], (txid, kind)
        for update in sequence:
            validate_message("explanation", update)
        if kind != "counterfactual":
            continue
        final, verdict, tx = sequence[-1], flagged[txid], by_tx[txid]
        assert final["priority"] == "high" and final["model_version"] == verdict["model_version"]
        result = final["counterfactual"]
        assert result["decision"] == verdict["decision"] == oracle.decision(before[txid], tx)
        for proposal in result["proposals"]:
            changed = {**tx, **proposal["changes"]}
            assert oracle.decision(before[txid], changed) == proposal["decision"], (txid, proposal)
            assert ORDER[proposal["decision"]] < ORDER[verdict["decision"]]
            proposals += 1
        if not any(p["decision"] == "approve" for p in result["proposals"]):
            assert result["note"] == "no change of these fields alone would approve it"
    assert proposals >= len(flagged)

    # The same transactions again: the scorer re-sends their verdicts; no kind is searched again.
    count = len(updates.read_to_end())
    stack.produce_transactions(transactions[:100])
    verdicts.read_until(lambda m: len(m) >= 400, 60, "100 re-sent verdicts")
    wait_until(lambda: _router_caught_up(stack), 60, "the router to consume every verdict")
    assert len(updates.read_to_end()) == count, "a re-sent verdict was explained or searched again"

    # Black box, not calling the search nor any feature code: each proposal (and the other end of
    # its amount range) produced as a new transaction, on a fresh card given the same history,
    # gets the stated decision from the scorer.
    fresh, stated = black_box_transactions(sequences, before, by_tx)
    assert len(stated) >= proposals
    stack.produce_transactions(fresh)
    verdicts.read_until(
        lambda _: set(stated) <= {v["transaction_id"] for v in verdicts.values()},
        120,
        "the black-box verdicts",
    )
    got = {v["transaction_id"]: v["decision"] for v in verdicts.values() if v["transaction_id"] in stated}
    assert got == stated, {t: (got[t], stated[t]) for t in stated if got[t] != stated[t]}


def black_box_transactions(
    sequences: dict[tuple[str, str], list[dict[str, Any]]],
    before: dict[str, list[dict[str, Any]]],
    by_tx: dict[str, dict[str, Any]],
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """Transactions to produce, and each proposal transaction's stated decision: per proposal and
    amount (the proposed one; ``amount_from`` too where a range is stated), a card of its own
    whose history is the original card's transactions before this one, same times and fields."""
    fresh: list[dict[str, Any]] = []
    stated: dict[str, str] = {}
    for (txid, kind), sequence in sorted(sequences.items()):
        if kind != "counterfactual":
            continue
        for proposal in sequence[-1]["counterfactual"]["proposals"]:
            ends = [None] if proposal["amount_from"] is None else [None, proposal["amount_from"]]
            for amount in ends:
                n = len(stated)
                card = f"card-bb-{n:04d}"
                fresh += [
                    {**old, "card_id": card, "transaction_id": f"bb-{n:04d}-h{i}"}
                    for i, old in enumerate(before[txid])
                ]
                changed = {
                    **by_tx[txid],
                    **proposal["changes"],
                    "card_id": card,
                    "transaction_id": f"bb-{n:04d}",
                }
                if amount is not None:
                    changed["amount"] = amount
                fresh.append(changed)
                stated[changed["transaction_id"]] = proposal["decision"]
    return fresh, stated


def _router_caught_up(stack: Stack) -> bool:
    from tests.integration.test_explainer import group_caught_up

    return group_caught_up(stack, "verdicts")


def test_sigkill_mid_counterfactual_then_restart_completes_it(stack: Stack, models_dir: Path) -> None:
    """Kill -9 while counterfactuals are calculating: the restarted explainer completes every one,
    those in flight included (attempt 2); per kind the statuses never go back."""
    from tests.integration.test_explainer import scored_verdicts, send

    env = {**KINDS_ON, "FRAUDLENS_INSTANCE_ID": "x1"}
    explainer = stack.start_worker("explainer", **env)
    flagged = [v for v in scored_verdicts(models_dir, 8000, 5) if v["decision"] != "approve"][:150]
    assert len(flagged) >= 100, len(flagged)
    updates = stack.reader("explanation.updates")
    send(stack, "verdicts", flagged)

    def mid_search(_: list[Any]) -> bool:
        last = {key: seq[-1]["status"] for key, seq in by_kind(updates).items() if key[1] == "counterfactual"}
        statuses = Counter(last.values())
        return statuses["complete"] >= 10 and statuses["calculating"] > 0

    updates.read_until(mid_search, 180, "counterfactuals in the middle of their search")
    explainer.kill()
    updates.read_to_end()
    in_flight = {
        txid for (txid, kind), seq in by_kind(updates).items()
        if kind == "counterfactual" and seq[-1]["status"] == "calculating"
    }  # fmt: skip
    assert in_flight, "the kill landed between two batches: nothing was in flight to search again"
    stack.start_worker("explainer", **env)
    wanted = {v["transaction_id"] for v in flagged}

    def all_complete(_: list[Any]) -> bool:
        return complete(updates, "counterfactual") >= wanted and complete(updates, "contributions") >= wanted

    updates.read_until(all_complete, 300, "every kind of every verdict complete after the restart")

    rank = {"pending": 0, "calculating": 1, "complete": 2}
    for key, sequence in by_kind(updates).items():
        ranks = [rank[u["status"]] for u in sequence]
        assert ranks == sorted(ranks) and ranks[-1] == 2, (key, [u["status"] for u in sequence])
    finals = {txid: seq[-1] for (txid, kind), seq in by_kind(updates).items() if kind == "counterfactual"}
    # Searched again (attempt 2), unless its final row reached the local store before the kill (then
    # announced again as it was, as in test_explainer's SIGKILL test).
    assert [t for t in in_flight if finals[t]["attempts"] >= 2], "no search in flight at the kill was redone"
    assert all(finals[v["transaction_id"]]["counterfactual"]["decision"] == v["decision"] for v in flagged)


def test_on_demand_counterfactual_by_cli_after_and_before_the_verdict(stack: Stack, models_dir: Path) -> None:
    """With no counterfactual routed by itself, ``fraudlens explain TXID --kind
    counterfactual`` asks for one: after the verdict (read back from ``verdicts``) and before it
    (a request that waits for its verdict). Each ends complete at high priority, its proposals
    confirmed by the oracle; asked again, it is found at once and not searched again."""
    from tests.integration.test_explain_cli import explain

    stack.start_worker("scorer")
    stack.start_worker("explainer", **KINDS_OFF)
    transactions = list(generate_transactions(300, seed=43))
    stack.produce_transactions(transactions[:299])
    verdicts = stack.reader("verdicts")
    verdicts.read_until(lambda m: len(m) >= 299, 120, "299 verdicts")
    flagged = [v for v in verdicts.values() if v["decision"] != "approve"][:2]
    assert len(flagged) == 2, "too few flagged verdicts for the claims below"
    updates = stack.reader("explanation.updates")
    updates.read_until(lambda _: len(complete(updates, "contributions")) >= 299, 120, "contributions")
    assert not complete(updates, "counterfactual"), "a counterfactual computed unasked"

    history: dict[str, list[dict[str, Any]]] = defaultdict(list)
    before: dict[str, list[dict[str, Any]]] = {}
    for tx in transactions:
        before[tx["transaction_id"]] = list(history[tx["card_id"]])
        history[tx["card_id"]].append(tx)
    by_tx, oracle = {tx["transaction_id"]: tx for tx in transactions}, Oracle(models_dir)

    def check(txid: str, decision: str) -> dict[str, Any]:
        done = explain(stack, txid, "--kind", "counterfactual", "--json")
        assert done.returncode == 0, done.stderr + done.stdout
        update = json.loads(done.stdout)
        validate_message("explanation", update)
        assert (update["kind"], update["status"]) == ("counterfactual", "complete")
        assert update["priority"] == "high"
        result = update["counterfactual"]
        assert result["decision"] == decision == oracle.decision(before[txid], by_tx[txid])
        for proposal in result["proposals"]:
            changed = {**by_tx[txid], **proposal["changes"]}
            assert oracle.decision(before[txid], changed) == proposal["decision"], (txid, proposal)
        return update

    for verdict in flagged:  # after the verdict: read back from the topic
        check(verdict["transaction_id"], verdict["decision"])
    count = len(updates.read_to_end())
    again = explain(stack, flagged[0]["transaction_id"], "--kind", "counterfactual")
    assert again.returncode == 0 and "(counterfactual): complete" in again.stdout, again.stdout
    assert "changed transactions scored" in again.stdout

    # Before the verdict: the request waits for it (the last transaction, produced meanwhile).
    last = transactions[-1]
    waiting = subprocess.Popen(
        [sys.executable, "-m", "app.cli.main", "explain", last["transaction_id"], "--kind", "counterfactual",
         "--json", "--timeout", "120"],
        cwd=REPO, env=stack.env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        requests = stack.reader("explain.requests")
        asked = last["transaction_id"].encode()
        requests.read_until(lambda m: any(r.key() == asked for r in m), 60, "the early request")
        wait_until(lambda: group_caught_up(stack, "explain.requests"), 60, "the early request routed")
        assert len(updates.read_to_end()) == count, (
            "asked again or before its verdict, something was published"
        )
        stack.produce_transactions([last])
        out, err = waiting.communicate(timeout=150)
    finally:
        waiting.kill()
    assert waiting.returncode == 0, err + out
    update = json.loads(out)
    assert (update["status"], update["priority"], update["kind"]) == ("complete", "high", "counterfactual")
    decision = oracle.decision(before[last["transaction_id"]], last)
    assert update["counterfactual"]["decision"] == decision
    key = f"{flagged[0]['transaction_id']}#counterfactual".encode()
    searched = [u for u in updates.read_to_end() if u.key() == key]
    assert [orjson.loads(u.value())["status"] for u in searched] == ["pending", "calculating", "complete"]


def test_priority_under_overload_with_both_kinds(stack: Stack, models_dir: Path) -> None:
    """4,000 low contributions queued, then deny/review verdicts (high contributions and high
    counterfactuals, ~20x the CPU each): the high work of both kinds finishes while most of the
    low backlog still waits, and no low request is passed by high work of either kind queued
    more than the aging bound after it (the strict aged-first rule, as test_explainer's test)."""
    from tests.integration.test_explainer import aging_held, by_priority, moment, scored_verdicts, send

    aging = 6.0
    stack.start_worker(
        "explainer", **KINDS_ON, FRAUDLENS_EXPLAIN_AGING_S=str(aging), FRAUDLENS_EXPLAIN_AGED_SHARE="1"
    )
    verdicts = scored_verdicts(models_dir, 8000, 5)
    lows = by_priority(verdicts)["low"][:4000]
    flagged = [v for v in verdicts if v["decision"] != "approve"]
    first_wave, second_wave = flagged[:30], flagged[30:60]
    assert len(second_wave) == 30, len(flagged)
    updates = stack.reader("explanation.updates")
    send(stack, "verdicts", lows)
    updates.read_until(
        lambda _: len(complete(updates, "contributions")) >= 1, 120, "the low backlog to start"
    )
    send(stack, "verdicts", first_wave)
    low_ids = {v["transaction_id"] for v in lows}

    def aged_low_waiting(_: list[Any]) -> bool:
        cutoff = time.time() - aging - 1.0
        last = {
            t: seq[-1] for (t, k), seq in by_kind(updates).items() if k == "contributions" and t in low_ids
        }
        return any(
            u["status"] == "pending" and moment(u["timings"]["queued_at"]) < cutoff for u in last.values()
        )

    updates.read_until(aged_low_waiting, 90, "a low request waiting past the aging bound")
    lows_left = len(low_ids - complete(updates, "contributions"))
    send(stack, "verdicts", second_wave)
    high_ids = {v["transaction_id"] for v in [*first_wave, *second_wave]}
    updates.read_until(
        lambda _: complete(updates, "contributions") >= low_ids | high_ids
        and complete(updates, "counterfactual") >= high_ids,
        400, "every low and high explanation of both kinds",
    )  # fmt: skip

    sequences = by_kind(updates)
    started = {key: moment(u["timings"]["started_at"]) for key, seq in sequences.items()
               for u in seq if u["status"] == "calculating"}  # fmt: skip
    finals = {key: seq[-1] for key, seq in sequences.items()}
    queued = {key: moment(u["timings"]["queued_at"]) for key, u in finals.items()}
    completed = {key: moment(u["timings"]["completed_at"]) for key, u in finals.items()}
    first = [(t["transaction_id"], k) for t in first_wave for k in ("contributions", "counterfactual")]
    second = [(t["transaction_id"], k) for t in second_wave for k in ("contributions", "counterfactual")]
    assert {finals[key]["priority"] for key in first + second} == {"high"}
    lows_keys = [(t, "contributions") for t in low_ids]
    first_done = max(completed[key] for key in first)
    lows_after = sum(completed[key] > first_done for key in lows_keys)
    assert lows_after >= 1000, f"only {lows_after} lows finished after the first high wave (both kinds)"
    passed, aged = aging_held(queued, started, lows_keys, second, aging)
    assert not passed, f"{len(passed)} low requests passed by newer high work, e.g. {passed[:3]}"
    assert lows_left > 200, f"only {lows_left} lows left at the second wave: the scenario cannot test aging"
    assert aged, "no aged low request was still waiting when the second wave came"
    searches = [completed[k] - queued[k] for k in first + second if k[1] == "counterfactual"]
    print(
        f"\n{lows_after} lows finished after the first wave; {len(aged)} aged lows served before the "
        f"second; counterfactual gap median {statistics.median(searches):.2f} s, max {max(searches):.2f} s"
    )
