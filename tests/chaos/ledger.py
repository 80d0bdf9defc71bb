"""The fault suite's ledger: what the broker accepted against what came out of the stack.

``ChaosLoad`` sends paced traffic (valid transactions with a share of malformed messages mixed
in) and counts only what the broker acked. ``Tap`` reads ``verdicts``, ``transactions.dlq`` and
``explanation.updates`` from offset 0 while the scenario runs (the embedded broker trims consumed
records after a short grace, so they are read as they come, not at the end). ``Ledger`` waits
until the stack has settled, prints the figures and says what was lost. Which verdicts must be
explained unasked, and at which priority, it decides with ``ExpectedRouting``: the rules stated
again here from the settings' values, never the product's own ``PriorityRules``, so that a routing
bug shows as missing or misrouted explanations instead of being counted as "sampled out".
"""

from __future__ import annotations

import base64
import hashlib
import itertools
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from app.kafka import topics
from app.model.generator import generate_transactions
from app.records.malformed import MALFORMED_KINDS, malformed_cases
from app.settings import Settings
from tests.integration.harness import Stack, wait_until

FINAL = frozenset({"complete", "failed"})
EXPLAIN_QUEUES = tuple(topics.EXPLAIN_TOPICS.values())
BAD_KEY_PREFIX = "chaos-bad-"


class ChaosLoad(threading.Thread):
    """``rate`` messages/s on a fixed schedule, ``bad_share`` of them malformed (each with the
    reason code it must get); only what the broker acked counts as sent."""

    def __init__(self, stack: Stack, rate: float, seed: int, bad_share: float = 0.02) -> None:
        super().__init__(daemon=True, name="chaos-load")
        self.stack, self.rate, self.seed, self.bad_share = stack, rate, seed, bad_share
        self.valid: dict[str, dict[str, Any]] = {}  # txid -> transaction, once acked
        self.valid_order: list[str] = []  # acked txids in ack order
        self.bad: dict[str, str] = {}  # key -> expected reason code, once acked
        self.produced = 0
        self.not_acked: list[str] = []  # delivery errors (not accepted: not counted as sent)
        self.stop = threading.Event()

    def run(self) -> None:
        producer = Producer({  # log_level 2: the broker scenario's reconnect errors are expected
            "bootstrap.servers": self.stack.bootstrap, "linger.ms": 5, "acks": "all", "log_level": 2,
        })  # fmt: skip
        rng = random.Random(self.seed)
        # Every kind, several times over (each message keeps its own key); built once, reused.
        bad_cases = itertools.cycle(malformed_cases(10 * len(MALFORMED_KINDS), seed=self.seed))
        transactions = generate_transactions(2_000_000, seed=self.seed)
        start = time.monotonic()
        while not self.stop.is_set():
            delay = start + self.produced / self.rate - time.monotonic()
            if delay > 0 and self.stop.wait(delay):  # pacing of the load, not synchronisation
                break
            if rng.random() < self.bad_share:
                case = next(bad_cases)
                key = f"{BAD_KEY_PREFIX}{self.produced}"
                producer.produce("transactions", key=key.encode(), value=case.value,
                                 on_delivery=self._bad_acked(key, case.code))  # fmt: skip
            else:
                tx = next(transactions)
                producer.produce("transactions", key=tx["card_id"].encode(), value=orjson.dumps(tx),
                                 on_delivery=self._valid_acked(tx))  # fmt: skip
            self.produced += 1
            producer.poll(0)
        # Whatever is still queued gets its answer (the broker may be restarting: wait long).
        producer.flush(120)

    def _valid_acked(self, tx: dict[str, Any]) -> Callable[[Any, Any], None]:
        def acked(err: Any, _message: Any) -> None:
            if err is None:
                self.valid[tx["transaction_id"]] = tx
                self.valid_order.append(tx["transaction_id"])
            else:
                self.not_acked.append(str(err))

        return acked

    def _bad_acked(self, key: str, code: str) -> Callable[[Any, Any], None]:
        def acked(err: Any, _message: Any) -> None:
            if err is None:
                self.bad[key] = code
            else:
                self.not_acked.append(str(err))

        return acked

    def acked_count(self) -> int:
        return len(self.valid_order) + len(self.bad)

    def finish(self) -> None:
        self.stop.set()
        self.join(180)
        assert not self.is_alive(), "the load producer did not flush within 180 s"


@dataclass
class Tap:
    """Reads the stack's output topics from offset 0 in a thread and indexes them as they come."""

    stack: Stack
    verdicts: dict[str, list[bytes]] = field(default_factory=dict)
    dlq: dict[str, list[dict[str, Any]]] = field(default_factory=dict)  # by original key
    updates: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    # txid -> what the tap read of it, in order, with where (for a problem's diagnosis)
    where: dict[str, list[str]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True, name="chaos-tap")
        self.consumer = Consumer({
            "bootstrap.servers": self.stack.bootstrap, "group.id": "chaos-tap",
            "enable.auto.commit": False, "fetch.wait.max.ms": 100, "log_level": 2,
        })  # fmt: skip
        # The explain queues only for ``where``: a stuck explanation's diagnosis names its requests.
        read = ("verdicts", "transactions.dlq", "explanation.updates", *EXPLAIN_QUEUES)
        metadata = self.consumer.list_topics(timeout=30).topics
        self.consumer.assign(
            [TopicPartition(t, p, 0) for t in read for p in range(len(metadata[t].partitions))]
        )
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.is_set():
            try:
                batch = self.consumer.consume(1000, timeout=0.1)
            except KafkaException as exc:  # the broker restarting: librdkafka reconnects
                self.errors.append(str(exc))
                continue
            for message in batch:
                if message.error() is None:
                    self._index(message)

    def _index(self, message: Any) -> None:
        topic = message.topic()
        if topic == "verdicts":
            self.verdicts.setdefault(message.key().decode(), []).append(message.value())
            self.where.setdefault(message.key().decode(), []).append(
                f"verdict {message.partition()}@{message.offset()}"
            )
        elif topic == "explanation.updates":
            update = orjson.loads(message.value())
            self.updates.setdefault(explanation_key(update), []).append(update)
            self.where.setdefault(update["transaction_id"], []).append(
                f"{update.get('status')} {message.partition()}@{message.offset()}"
            )
        elif topic in EXPLAIN_QUEUES:
            self.where.setdefault(message.key().decode(errors="replace"), []).append(
                f"request {topic} {message.partition()}@{message.offset()}"
            )
        else:
            record = orjson.loads(message.value())
            raw_key = record.get("original_key_b64")
            key = base64.b64decode(raw_key).decode(errors="replace") if raw_key else ""
            self.dlq.setdefault(key, []).append(record)

    def close(self) -> None:
        if not self.stop.is_set():
            self.stop.set()
            self.thread.join(30)
            self.consumer.close()


class _Progress:
    """Done when nothing is pending, or when the pending count has not fallen for ``stall_s``."""

    def __init__(self, pending: Callable[[], set[str]], stall_s: float) -> None:
        self.pending, self.stall_s = pending, stall_s
        self.left = len(pending())
        self.moved_at = time.monotonic()

    def settled(self) -> bool:
        left = len(self.pending())
        if left < self.left:
            self.moved_at = time.monotonic()
        self.left = left
        return left == 0 or time.monotonic() - self.moved_at > self.stall_s


@dataclass
class Figures:
    """One scenario's ledger; ``lost`` must be 0 and every ``problems`` entry empty."""

    counts: dict[str, Any]
    problems: dict[str, list[str]]

    @property
    def lost(self) -> int:
        return int(self.counts["lost"])


def explanation_key(update: dict[str, Any]) -> str:
    """An update's explanation: the transaction id for contributions (``kind`` absent), else
    ``id#kind`` — one status sequence per (transaction, kind)."""
    kind = update.get("kind") or "contributions"
    txid = str(update["transaction_id"])
    return txid if kind == "contributions" else f"{txid}#{kind}"


@dataclass(frozen=True)
class ExpectedRouting:
    """The routing rules as docs/explainer.md states them, with the thresholds the workers read from
    the same settings: deny or review, or an amount from ``high_min_amount`` on, is high; from
    ``normal_min_amount`` on, normal; else low. Only low verdicts are sampled: explained unasked
    when the BLAKE2b-64 point of the transaction id, as a fraction of 2**64, is below the rate."""

    high_decisions: frozenset[str]
    high_min_amount: float
    normal_min_amount: float
    low_sample_rate: float
    # The counterfactual kind (issue 20): the decisions that get one unasked, never sampled, and its queue.
    counterfactual_decisions: frozenset[str] = frozenset()
    counterfactual_priority: str = "high"
    # Issue 21: an uncertain verdict explained unasked goes high (its flag is the update's own, proven
    # against an independent oracle in tests/integration/test_uncertainty_kind.py).
    uncertain_high: bool = True

    @classmethod
    def from_settings(cls, low_sample_rate: float, **overrides: Any) -> ExpectedRouting:
        settings = Settings(explain_low_sample_rate=low_sample_rate, **overrides)
        return cls(
            frozenset(settings.explain_high_decisions),
            settings.explain_high_min_amount,
            settings.explain_normal_min_amount,
            settings.explain_low_sample_rate,
            frozenset(settings.explain_counterfactual_decisions),
            settings.explain_counterfactual_priority,
            settings.explain_uncertain_high,
        )

    def priority(self, decision: str, amount: float) -> str:
        if decision in self.high_decisions or amount >= self.high_min_amount:
            return "high"
        return "normal" if amount >= self.normal_min_amount else "low"

    def counterfactual(self, verdict: dict[str, Any]) -> str | None:
        """The queue of the verdict's counterfactual when it gets one unasked (it needs the card
        state the verdict carries)."""
        if verdict["decision"] in self.counterfactual_decisions and verdict.get("replay") is not None:
            return self.counterfactual_priority
        return None

    def explained_unasked(self, priority: str, transaction_id: str) -> bool:
        if priority != "low":
            return True
        digest = hashlib.blake2b(transaction_id.encode(), digest_size=8).digest()
        return int.from_bytes(digest, "big") / 2.0**64 < self.low_sample_rate


class Ledger:
    def __init__(
        self, stack: Stack, load: ChaosLoad, tap: Tap, low_sample_rate: float, **overrides: Any
    ) -> None:
        self.stack, self.load, self.tap = stack, load, tap
        self.routing = ExpectedRouting.from_settings(low_sample_rate, **overrides)
        # inputs a broker lost after their verdict was out: no explanation is expected of them
        self.unexplainable: set[str] = set()

    # -- what is still outstanding ---------------------------------------------------------

    def missing_verdicts(self) -> set[str]:
        return set(self.load.valid) - set(self.tap.verdicts)

    def missing_dlq(self) -> set[str]:
        return set(self.load.bad) - set(self.tap.dlq)

    def auto_explained(self) -> dict[str, str]:
        """Explanation key -> priority of every explanation that must be computed unasked, for
        each valid transaction with a verdict: its contributions (key: the transaction id) by the
        verdict's decision and the amount the load sent, and its counterfactual (key
        ``id#counterfactual``) where the rules give it one."""
        out = {}
        for txid, transaction in self.load.valid.items():
            values = self.tap.verdicts.get(txid)
            if values and txid not in self.unexplainable:
                verdict = orjson.loads(values[0])
                priority = self.routing.priority(verdict["decision"], float(transaction["amount"]))
                if self.routing.explained_unasked(priority, txid):
                    out[txid] = "high" if self.routing.uncertain_high and self._uncertain(txid) else priority
                counterfactual = self.routing.counterfactual(verdict)
                if counterfactual is not None:
                    out[f"{txid}#counterfactual"] = counterfactual
        return out

    def _uncertain(self, txid: str) -> bool:
        """Whether the transaction's contributions updates say its verdict is uncertain."""
        return any(
            (u.get("uncertainty") or {}).get("uncertain") is True for u in self.tap.updates.get(txid, [])
        )

    def unfinished_explanations(self) -> set[str]:
        return {t for t in self.auto_explained() if not self._final(t)}

    def _final(self, txid: str) -> str | None:
        updates = self.tap.updates.get(txid, [])
        finals = [u["status"] for u in updates if u["status"] in FINAL]
        return finals[-1] if finals else None

    def settle(
        self, verdict_timeout: float = 240, explain_timeout: float = 420, stall_s: float = 120
    ) -> None:
        """Wait (bounded) until every accepted input has its verdict or DLQ record and every
        auto-explained verdict a final explanation, or until the shortfall has not shrunk for
        ``stall_s``; what is left is for ``figures`` to report."""
        for what, pending, timeout in (
            ("a verdict for every accepted transaction", self.missing_verdicts, verdict_timeout),
            ("a DLQ record for every accepted malformed input", self.missing_dlq, 60),
            ("a final explanation for every auto-explained verdict", self.unfinished_explanations,
             explain_timeout),
        ):  # fmt: skip
            progress = _Progress(pending, stall_s)
            try:
                wait_until(progress.settled, timeout, what, interval=1.0)
            except AssertionError as exc:
                print(f"  ledger: {exc}", flush=True)
            if progress.left:
                print(f"  ledger: {progress.left} still without {what} (no progress for {stall_s:.0f} s)")

    # -- the figures -------------------------------------------------------------------------

    def figures(self) -> Figures:
        load, tap = self.load, self.tap
        problems: dict[str, list[str]] = {}
        valid, bad = set(load.valid), set(load.bad)
        with_verdict = valid & set(tap.verdicts)
        messages = sum(len(tap.verdicts[t]) for t in with_verdict)
        differing = [t for t in with_verdict if len(set(tap.verdicts[t])) > 1]
        problems["verdict duplicates with differing content"] = differing
        problems["verdicts missing"] = sorted(valid - with_verdict)
        problems["verdicts for ids never sent"] = sorted(set(tap.verdicts) - valid)[:20]

        dlq_records = sum(len(v) for v in tap.dlq.values())
        problems["DLQ missing"] = sorted(bad - set(tap.dlq))
        problems["DLQ wrong or empty reason"] = [
            f"{k}: expected {load.bad[k]}, got {[r['reason_code'] for r in tap.dlq[k]]}"
            for k in bad & set(tap.dlq)
            if any(r["reason_code"] != load.bad[k] or len(r.get("reason", "")) < 5 for r in tap.dlq[k])
        ]
        problems["valid inputs in the DLQ"] = [k for k in tap.dlq if not k.startswith(BAD_KEY_PREFIX)]

        auto = self.auto_explained()
        finals = {t: self._final(t) for t in auto}
        statuses = Counter(finals.values())
        complete = statuses["complete"]
        problems["explanations failed"] = [
            f"{t}: {tap.updates[t][-1].get('reason_code')} {tap.updates[t][-1].get('reason')}"
            for t, s in finals.items()
            if s == "failed"
        ]
        stuck = [t for t, s in finals.items() if s is None and t in tap.updates]
        problems["explanations stuck (pending/calculating)"] = stuck
        problems["explanations missing (no update at all)"] = [
            t for t, s in finals.items() if s is None and t not in tap.updates
        ]
        resent, differing_expl, wrong_version = self._explanation_content(auto)
        problems["complete explanations with differing content"] = differing_expl
        problems["explanations with another model version than the verdict"] = wrong_version
        problems["explanations at another priority than the rules give"] = [
            f"{t}: {p}, queued {sorted({u['priority'] for u in tap.updates[t]})}"
            for t, p in auto.items()
            if t in tap.updates and {u["priority"] for u in tap.updates[t]} != {p}
        ]
        kinds = Counter(key.partition("#")[2] or "contributions" for key in auto)
        sampled_out = [t for t in with_verdict if t not in auto and t not in self.unexplainable]
        problems["sampled-out verdicts explained unasked"] = [t for t in sampled_out if t in tap.updates]

        lost = len(valid - with_verdict) + len(bad - set(tap.dlq)) + (len(auto) - complete)
        counts = {
            "sent": len(valid) + len(bad), "valid": len(valid), "malformed": len(bad),
            "not_acked": len(load.not_acked), "verdicts": len(with_verdict),
            "verdict_messages": messages, "duplicates": messages - len(with_verdict),
            "dlq_records": dlq_records, "dlq_covered": len(bad & set(tap.dlq)),
            "auto": len(auto), "complete": complete, "failed": statuses["failed"],
            "stuck": len(stuck), "sampled_out": len(sampled_out), "complete_resent": resent,
            "by_priority": dict(Counter(auto.values())), "by_kind": dict(kinds), "lost": lost,
        }  # fmt: skip
        return Figures(counts, problems)

    def _explanation_content(self, auto: dict[str, str]) -> tuple[int, list[str], list[str]]:
        resent, differing, wrong_version = 0, [], []
        for txid in auto:
            completes = [u for u in self.tap.updates.get(txid, []) if u["status"] == "complete"]
            if not completes:
                continue
            resent += len(completes) - 1
            contents = {
                orjson.dumps(
                    [u.get(f) for f in ("contributions", "base_value", "counterfactual", "model_version")]
                )
                for u in completes
            }
            if len(contents) > 1:
                differing.append(txid)
            verdict = orjson.loads(self.tap.verdicts[txid.partition("#")[0]][0])
            if completes[-1]["model_version"] != verdict["model_version"]:
                wrong_version.append(txid)
        return resent, differing, wrong_version

    def report(self, scenario: str, seed: int, notes: list[str]) -> Figures:
        """Print the ledger; the caller asserts on what it returns (see ``assert_clean``)."""
        f = self.figures()
        c = f.counts
        same = "yes" if not f.problems["verdict duplicates with differing content"] else "NO"
        lines = [
            f"LEDGER {scenario} (seed {seed})",
            *(f"  event       {note}" for note in notes),
            f"  sent        {c['sent']} acked by the broker: {c['valid']} valid, {c['malformed']} malformed"
            f" (not acked: {c['not_acked']})",
            f"  verdicts    {c['verdicts']} distinct of {c['valid']} valid, {c['verdict_messages']} messages;"
            f" duplicates {c['duplicates']}, identical content: {same}",
            f"  DLQ         {c['dlq_covered']} of {c['malformed']} malformed with their reason"
            f" ({c['dlq_records']} records); valid inputs in DLQ {len(f.problems['valid inputs in the DLQ'])}",  # noqa: E501
            f"  explained   complete {c['complete']} of {c['auto']} auto-explained {c['by_priority']}"
            f" {c['by_kind']};"
            f" failed {c['failed']}, stuck {c['stuck']}; complete re-sent {c['complete_resent']}",
            f"  sampled out {c['sampled_out']} low-priority verdicts (explained on demand only, by rule)",
            f"  lost        {c['lost']}",
        ]
        for name, items in f.problems.items():
            if items:
                lines.append(f"  PROBLEM     {name}: {len(items)}, e.g. {items[:5]}")
                lines += [
                    f"    {t}: read {self.tap.where.get(t.partition('#')[0], [])}"
                    for t in items[:3]
                    if t.partition("#")[0] in self.tap.where
                ]
        print("\n" + "\n".join(lines), flush=True)
        return f


def assert_clean(figures: Figures, logs: str) -> None:
    problems = {name: items for name, items in figures.problems.items() if items}
    summary = {k: (len(v), v[:5]) for k, v in problems.items()}
    assert figures.lost == 0 and not problems, f"lost {figures.lost}; {summary}; logs kept in {logs}"
    assert figures.counts["valid"] > 0 and figures.counts["malformed"] > 0
