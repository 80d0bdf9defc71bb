"""``fraudlens explain TXID``: ask for an explanation on demand and wait for it.

The request goes to ``explain.requests`` keyed by the transaction id (the explainer routes it to
high priority). Updates for a transaction live in one partition of ``explanation.updates`` (keyed
by transaction id, the same partitioner), so the command reads only that partition, from its
start: an explanation finished before the request is found at once.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import click
import orjson

from app.kafka import topics
from app.records.kinds import CONTRIBUTIONS, COUNTERFACTUAL, SIMILAR_CASES, UNCERTAINTY, row_key
from app.records.validation import explain_request_record

FINISHED = ("complete", "failed")


def _producer(settings: Any) -> Any:
    from confluent_kafka import Producer

    from app.kafka.admin import producer_config

    return Producer(producer_config(settings, **{"acks": "all", "partitioner": "murmur2_random"}))


def _request(producer: Any, settings: Any, txid: str, kind: str) -> int:
    """Send the request; the delivery report names the partition the key maps to."""
    delivered: list[Any] = []
    producer.produce(
        topics.EXPLAIN_REQUESTS,
        key=txid.encode(),
        value=explain_request_record(txid, kind=kind),
        on_delivery=lambda err, msg: delivered.append((err, msg)),
    )
    producer.flush(30)
    if not delivered:
        raise click.ClickException(f"the broker at {settings.bootstrap_servers} did not take the request")
    err, message = delivered[0]
    if err is not None:
        raise click.ClickException(f"the request was refused: {err}")
    return int(message.partition())


def _latest_final(settings: Any, txid: str, timeout_s: float, kind: str) -> dict[str, Any] | None:
    """Request, then watch the transaction's partition of the updates for the kind's final state
    (its row's key: the transaction id, ``id#kind`` for another kind than contributions). The
    uncertainty rides with the contributions: their request is sent (a sampled-out verdict gets
    routed) and the first of their updates that carries it is the answer.

    One request is enough: a request that reaches the explainer before the transaction's verdict
    is remembered and served when the verdict comes (``app/explainer/router.py``).
    """
    from confluent_kafka import Consumer, TopicPartition

    from app.kafka.admin import client_config

    consumer = Consumer(
        client_config(
            settings,
            **{
                "group.id": f"fraudlens-explain-{uuid.uuid4().hex[:8]}",
                "enable.auto.commit": False,
                "log_level": 2,
            },
        )
    )
    producer = _producer(settings)
    try:
        riding = kind == UNCERTAINTY
        asked = CONTRIBUTIONS if kind in (UNCERTAINTY, SIMILAR_CASES) else kind
        partition = _request(producer, settings, txid, asked)
        key = row_key(txid, asked)
        sent = time.monotonic()
        consumer.assign([TopicPartition(topics.EXPLANATION_UPDATES, partition, -2)])  # from the start
        deadline = sent + timeout_s
        latest: dict[str, Any] | None = None
        while time.monotonic() < deadline:
            for message in consumer.consume(500, timeout=0.2):
                if message.error() is not None or message.key() != key:
                    continue
                try:
                    update = orjson.loads(message.value() or b"")
                except orjson.JSONDecodeError:
                    continue
                if not isinstance(update, dict):
                    continue
                if update.get("status") in FINISHED or (
                    riding and isinstance(update.get("uncertainty"), dict)
                ):
                    latest = update
            if latest is not None:
                return latest
        return None
    finally:
        consumer.close()


def run_explain(txid: str, timeout_s: float, as_json: bool, kind: str = CONTRIBUTIONS) -> int:
    from confluent_kafka import KafkaException

    from app.settings import get_settings

    settings = get_settings()
    try:
        update = _latest_final(settings, txid, timeout_s, kind)
    except KafkaException as exc:
        raise click.ClickException(f"cannot talk to Kafka at {settings.bootstrap_servers}: {exc}") from None
    if update is None:
        raise click.ClickException(
            f"no explanation for {txid} within {timeout_s:g} s "
            "(unknown transaction id, or no explainer running?)"
        )
    if as_json:
        click.echo(json.dumps(update, indent=2))
    else:
        renderers = {
            CONTRIBUTIONS: render,
            COUNTERFACTUAL: render_counterfactual,
            UNCERTAINTY: render_uncertainty,
            SIMILAR_CASES: render_similar_cases,
        }
        click.echo(renderers[kind](update))
    if kind == UNCERTAINTY:
        return 0 if "probability" in (update.get("uncertainty") or {}) else 1
    if kind == SIMILAR_CASES:
        return 0 if "cases" in (update.get("similar_cases") or {}) else 1
    return 0 if update["status"] == "complete" else 1


def _head(update: dict[str, Any], label: str = "") -> str:
    """The first line; when it did not complete, the failure's reason too (all there is to say)."""
    head = (
        f"{update['transaction_id']}{label}: {update['status']} "
        f"({update.get('priority')}, model {update.get('model_version')})"
    )
    if update["status"] != "complete":
        return f"{head}\n  {update.get('reason_code', '')}: {update.get('reason', '')}"
    return head


def render(update: dict[str, Any]) -> str:
    head = _head(update)
    if update["status"] != "complete":
        return head
    lines = [
        head,
        f"  base value {update['base_value']:+.4f} + contributions = raw score {update['raw_score']:+.4f} "
        f"({update.get('units', 'log-odds')}){' — from the cache' if update.get('cache_hit') else ''}",
    ]
    for top in update.get("top_features", []):
        lines.append(f"  {top['contribution']:+.4f}  {top['feature']:<24} {top['reason']}")
    return "\n".join(lines)


def render_counterfactual(update: dict[str, Any]) -> str:
    """What would change the verdict: each verified proposal in words, with its score."""
    head = _head(update, " (counterfactual)")
    if update["status"] != "complete":
        return head
    result = update["counterfactual"]
    lines = [head, f"  the verdict: {result['decision']} (score {result['score']:.4f})"]
    for proposal in result["proposals"]:
        lines.append(f"  - {proposal['text']} (score {proposal['score']:.4f} -> {proposal['decision']})")
    if result["note"]:
        lines.append(f"  {result['note']}")
    lines.append(f"  ({result['candidates']} changed transactions scored)")
    return "\n".join(lines)


def _riding(update: dict[str, Any], field: str, present: str) -> tuple[str, dict[str, Any] | str]:
    """A kind that rides with the contributions: its first line, and the found value or what to
    print instead (none in the update, or unavailable with why)."""
    head = f"{update['transaction_id']} ({field.replace('_', ' ')}, model {update.get('model_version')})"
    found = update.get(field)
    if not isinstance(found, dict):
        return head, f"{head}\n  none: the contributions ended {update['status']} without it"
    if present not in found:
        return head, f"{head}\n  unavailable: {found.get('unavailable')}"
    return head, found


def render_uncertainty(update: dict[str, Any]) -> str:
    """How sure the model is: the probability interval, the prediction set in words, the flag."""
    head, found = _riding(update, "uncertainty", "probability")
    if isinstance(found, str):
        return found
    low, high = found["interval"]
    lines = [
        head,
        f"  fraud probability {found['probability']:.4f}, interval [{low:.4f}, {high:.4f}] (Venn-ABERS)",
        f"  {prediction_set_words(found['prediction_set'], found['confidence'])}",
    ]
    boundaries = found["boundaries"]
    if found["uncertain"]:
        named = " and ".join(f"{name} ({boundaries[name]:.4f})" for name in found["straddles"])
        lines.append(f"  uncertain: the interval straddles the {named} threshold")
    else:
        lines.append(
            f"  certain: the interval holds neither threshold (review {boundaries['review']:.4f}, "
            f"deny {boundaries['deny']:.4f})"
        )
    return "\n".join(lines)


def prediction_set_words(labels: list[str], confidence: float) -> str:
    """The conformal prediction set as a sentence (the console says the same, app/console/kinds.js)."""
    level = f"{confidence:.0%}"
    if labels == ["legitimate", "fraud"]:
        return f"the model cannot rule out fraud at {level} (nor legitimate)"
    if labels == ["fraud"]:
        return f"the model cannot rule out fraud at {level}, and rules out legitimate"
    if labels == ["legitimate"]:
        return f"the model rules out fraud at {level}"
    return f"the model rules out both at {level}: unlike the cases it was calibrated on"


def render_similar_cases(update: dict[str, Any]) -> str:
    """The most similar past transactions, nearest first: outcome, pattern, amount and where."""
    head, found = _riding(update, "similar_cases", "cases")
    if isinstance(found, str):
        return found
    lines = [head, f"  the {len(found['cases'])} nearest labelled past transactions in SHAP space:"]
    for case in found["cases"]:
        outcome = case["outcome"] + (f" ({case['pattern']})" if case["pattern"] else "")
        lines.append(
            f"  {outcome:<28} {case['amount']:>10.2f} {case['currency']}  {case['channel']:<4} "
            f"{case['country']}  {case['card']}  {case['transaction_id']}  distance {case['distance']:.3f}"
        )
    return "\n".join(lines)
