"""The router (explainer role): verdicts and on-demand requests → ``explain.<priority>``.

Per verdict and kind (contributions always; a counterfactual for the decisions
``FRAUDLENS_EXPLAIN_COUNTERFACTUAL_DECISIONS`` names, in its own row): dedup against the
``explanations`` row (one explanation per transaction, kind and model version, also for re-sent
verdicts), priority by ``PriorityRules``, a ``pending`` row (or
``sampled_out`` in ``explanation_waiting`` for a low verdict left out by sampling), then the
ExplainRequest. The ``pending`` row's changelog record is the ``pending`` update itself
(``app.explainer.explanation_tables``). Order per batch: rows (so the updates) acked by the broker, then
requests sent, then the batch's events acked. A crash after the rows but before the requests leaves a
``pending`` row whose ``source`` is the very verdict being replayed: the router sends its
request again (``RouteAction.RESEND``), so no request is lost and none is computed twice (the
worker skips a request whose row is already finished).

On-demand requests (``explain.requests``, keyed by transaction_id, value
``{"transaction_id": …, "method": optional, "kind": optional}``) re-queue a known transaction at
high priority. An on-demand counterfactual needs its verdict's card state: before the verdict it
waits as a ``requested`` row like any kind; after it, the verdict is read back from ``verdicts``
(``app.explainer.verdict_reader``, before the batch is routed), and one the topic no longer holds
ends ``failed`` (``verdict_unavailable``).
A request that arrives before its verdict leaves a ``requested`` row; the verdict, when it
comes, is routed at high priority with the requested method (never sampled out). The row lives
as long as any ``explanations`` row (the table's retention), so a request for a transaction that
never comes costs one row until then.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, OrderedDict
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
from faust.types import EventT, StreamT

from app.explain.core import METHODS
from app.explain.messages import FailureCode, explain_request
from app.explain.policy import PriorityRules
from app.explain.state import (
    REQUESTED,
    SAMPLED_OUT,
    RouteAction,
    failed,
    from_record,
    new_row,
    on_demand_wanted,
    replay_action,
    requested_row,
    route_action,
    to_record,
)
from app.explain.uncertainty import Uncertainties
from app.explainer.faust_patches import micro_batches
from app.explainer.skips import Skips, checked_record
from app.explainer.table_io import TableWriter, give_up, named_sink, source_of, stored_json, utc_now
from app.explainer.verdict_reader import VerdictReader
from app.kafka import topics
from app.kafka.sink import DeliveryFailed, Sink
from app.records.kinds import COUNTERFACTUAL, SPLIT_SEARCH, kind_of, row_key
from app.records.validation import InvalidInput, build_dlq_record, dlq_key, validate_explain_request
from app.runtime import metrics
from app.runtime.stats import BatchTimings
from app.settings import ExplainerSettings

if TYPE_CHECKING:
    from app.explainer import ExplainerParts
    from app.explainer.acks import InOrderAcks
    from app.explainer.explanation_tables import ExplanationTables
    from app.explainer.workers import HandOver

log = logging.getLogger(__name__)
DLQ_SOURCES_KEPT = 10_000  # rejected requests remembered per process (see Router)

ROUTE_BATCH_MAX = 1000
_PRIORITY_OF = {topic: priority for priority, topic in topics.EXPLAIN_TOPICS.items()}
ROUTE_BATCH_WITHIN_S = 0.002

# topic, key, value, partition: the routed event's own, so that the row, the request and every
# update of a transaction share one partition whatever partitioner produced the verdict.
Send = tuple[str, bytes, bytes, int]


class Checked(NamedTuple):
    """A verdict record parsed and checked once (``Router.check``): the verdict and its
    uncertainty, or why it was refused."""

    verdict: dict[str, Any] | None
    problem: str | None
    uncertainty: dict[str, Any] | None


class Router:
    """Routes one event at a time; table rows are written at once, sends are returned."""

    def __init__(
        self,
        writer: TableWriter,
        tables: ExplanationTables,
        rules: PriorityRules,
        settings: ExplainerSettings,
        skips: Skips | None = None,
    ) -> None:
        self.writer, self.rules, self.settings = writer, rules, settings
        self.explanations, self.waiting = tables.explanations, tables.waiting
        self.method = settings.explain_method
        self.uncertainties = Uncertainties(settings.models_dir, settings.explain_confidence)
        self.skips = skips or Skips(settings.explain_stats_every_s)
        # This batch's on-demand counterfactuals' verdicts, read back before it is routed
        # (``verdicts_to_read``): transaction id → the verdict, or why it could not be read.
        self.verdicts_read: dict[str, dict[str, Any] | str] = {}
        self.counts: Counter[str] = Counter()
        # Sources of the rejected requests this process sent to the DLQ (bounded, oldest out):
        # a record read again in the same process (the offset guard seeking back after Faust
        # delivered past a start-up seek; a rebalance that hands a partition back) gets no
        # second DLQ record. Across a restart a replay may still repeat one (at least once).
        self._dlq_sent: OrderedDict[tuple[int, int], None] = OrderedDict()

    def route(self, stream: StreamT, event: EventT, now: str, checked: Checked | None = None) -> list[Send]:
        """Bad input never stops the router: an on-demand request no contract allows gets a
        bounded ``explain.requests.dlq`` record (outsiders write that topic); a bad verdict (only
        a misconfigured client writes there) is counted, logged (rate-limited) and skipped.
        ``checked``: a verdict's ``check`` with its micro-batch (checked here when not given)."""
        message = event.message
        if message.topic == topics.EXPLAIN_REQUESTS:
            try:
                asked = validate_explain_request(
                    message.value, message.key, METHODS, self.settings.max_message_bytes
                )
            except InvalidInput as exc:
                source = (message.partition, message.offset)
                if source in self._dlq_sent:
                    self.counts["rejected_requests_read_again"] += 1
                    return []
                self._dlq_sent[source] = None
                if len(self._dlq_sent) > DLQ_SOURCES_KEPT:
                    self._dlq_sent.popitem(last=False)
                self.counts["rejected_requests"] += 1
                return [self._dlq_send(event, exc)]
            return self._guarded(stream, event, self._on_demand, asked, now)
        checked = checked or self.check([event])[0]
        assert checked is not None  # every record but a request is read as a verdict
        if checked.verdict is None:
            self.counts["invalid"] += 1
            self.skips.skip(message.topic, source_of(event), checked.problem or "no verdict")
            return []
        return self._guarded(stream, event, self._verdict, checked, now)

    def check(self, events: Sequence[EventT]) -> list[Checked | None]:
        """Each verdict of a micro-batch parsed and checked against its contract once
        (``checked_record``), and the valid ones' uncertainty in one array pass per model version
        (``Uncertainties.of_many``); None for an on-demand request (``route`` checks those)."""
        parsed = [
            None
            if e.message.topic == topics.EXPLAIN_REQUESTS
            else checked_record(e.message.value, e.message.key, "verdict")
            for e in events
        ]
        valid = [verdict for verdict, _ in filter(None, parsed) if verdict is not None]
        found = iter(self.uncertainties.of_many(valid) if valid else [])
        return [
            None if p is None else Checked(p[0], p[1], next(found) if p[0] is not None else None)
            for p in parsed
        ]

    def _dlq_send(self, event: EventT, exc: InvalidInput) -> Send:
        """The bounded DLQ record of a rejected on-demand request, to the request's own partition
        number of ``explain.requests.dlq`` (created with the same partition count)."""
        message = event.message
        record = build_dlq_record(
            message.value, message.key, exc, message.topic, message.partition, message.offset,
            datetime.now(UTC), value_prefix_bytes=self.settings.dlq_value_prefix_bytes,
            key_prefix_bytes=self.settings.dlq_key_prefix_bytes,
        )  # fmt: skip
        key = dlq_key(message.key, self.settings.dlq_key_prefix_bytes) or b""
        metrics.DLQ_RECORDS.labels(reason=exc.code).inc()
        return topics.EXPLAIN_REQUESTS_DLQ, key, orjson.dumps(record), message.partition

    def _guarded(self, stream: StreamT, event: EventT, handle: Any, message: Any, now: str) -> list[Send]:
        # Valid by contract but still refused (e.g. a model version or method the rules reject):
        # counted and skipped like a bad record, never a stopped router.
        try:
            sends: list[Send] = handle(stream, event, message, now)
        except (KeyError, TypeError, ValueError) as exc:
            self.counts["invalid"] += 1
            self.skips.skip(event.message.topic, source_of(event), f"cannot route: {exc}")
            return []
        return sends

    def _row(self, stream: StreamT, event: EventT, key: bytes) -> dict[str, Any] | None:
        """The published row (``explanations``) if any, else a waiting one (never published)."""
        row = from_record(stored_json(self.writer.get(stream, event, self.explanations, key)))
        if row is None:
            waiting = stored_json(self.writer.get(stream, event, self.waiting, key))
            row = dict(waiting) if isinstance(waiting, dict) else None
        return row

    def _verdict(self, stream: StreamT, event: EventT, checked: Checked, now: str) -> list[Send]:
        verdict = checked.verdict
        assert verdict is not None and checked.uncertainty is not None  # ``route`` refused the others
        sends = self._contributions(stream, event, verdict, checked.uncertainty, now)
        if verdict.get("replay") is not None:
            sends += self._counterfactual(stream, event, verdict, self.rules.counterfactual(verdict), now)
        return sends

    def _counterfactual(
        self, stream: StreamT, event: EventT, verdict: Mapping[str, Any], priority: str | None, now: str
    ) -> list[Send]:
        """The verdict's counterfactual, a row of its own (``id#counterfactual``): deduplicated,
        replayed and re-queued like the contributions row, never sampled out; routed when the
        rules give it a ``priority``, or at high priority when it was asked for before its verdict."""
        key = row_key(str(verdict["transaction_id"]), COUNTERFACTUAL)
        row, done = self._known(stream, event, key, verdict)
        if done is not None:
            return done
        asked = row is not None and row["status"] == REQUESTED
        if asked:
            self.counts["on_demand_counterfactual"] += 1
            request = explain_request(verdict, "high", now, on_demand=True, kind=COUNTERFACTUAL)
        elif priority is not None:
            self.counts[f"counterfactual_{priority}"] += 1
            request = explain_request(verdict, priority, now, kind=COUNTERFACTUAL)
        else:
            return []
        return self._publish(stream, event, key, new_row(request, "pending", source_of(event)))

    def _known(
        self, stream: StreamT, event: EventT, key: bytes, verdict: Mapping[str, Any]
    ) -> tuple[dict[str, Any] | None, list[Send] | None]:
        """The row under ``key`` and, when the verdict needs no new request, what to send
        instead: nothing (a duplicate), or what a replay of the message that wrote it left undone."""
        row = self._row(stream, event, key)
        action = route_action(row, verdict["model_version"], source_of(event))
        if action is RouteAction.SKIP:
            self.counts["deduplicated"] += 1
            return row, []
        if action is not RouteAction.NEW and row is not None:
            return row, self._replayed(stream, event, key, row, action)
        return row, None

    def _contributions(
        self,
        stream: StreamT,
        event: EventT,
        verdict: Mapping[str, Any],
        uncertainty: Mapping[str, Any],
        now: str,
    ) -> list[Send]:
        key = str(verdict["transaction_id"]).encode()
        row, done = self._known(stream, event, key, verdict)
        if done is not None:
            return done
        source = source_of(event)
        if row is not None and row["status"] == REQUESTED:  # asked for before the verdict came
            self.counts["on_demand"] += 1
            request = explain_request(
                verdict, "high", now, on_demand=True, method=row["method"], uncertainty=uncertainty
            )
            return self._publish(stream, event, key, new_row(request, "pending", source))
        priority = self.rules.priority(verdict)
        request = explain_request(verdict, priority, now, method=self.method, uncertainty=uncertainty)
        if not self.rules.sampled(priority, request["transaction_id"]):
            # Sampling stays the rules' alone (the relay tells "explained unasked" from the same
            # rules, without the calibration): an uncertain low verdict left out is asked for.
            self.counts["sampled_out"] += 1
            waiting = orjson.dumps(new_row(request, SAMPLED_OUT, source))
            self.writer.write(stream, event, self.waiting, key, waiting)
            return []
        if uncertainty.get("uncertain") and self.settings.explain_uncertain_high and priority != "high":
            self.counts["uncertain_high"] += 1
            priority = request["priority"] = "high"
        self.counts[priority] += 1
        return self._publish(stream, event, key, new_row(request, "pending", source))

    def _on_demand(self, stream: StreamT, event: EventT, asked: Mapping[str, Any], now: str) -> list[Send]:
        txid = asked["transaction_id"]
        if kind_of(asked) == COUNTERFACTUAL:
            return self._on_demand_counterfactual(stream, event, str(txid), now)
        method = asked.get("method") or self.method
        if not isinstance(txid, str) or not txid or method not in METHODS:
            raise ValueError(f"on-demand request needs a transaction_id and a method in {METHODS}")
        key = txid.encode()
        row = self._row(stream, event, key)
        source = source_of(event)
        if row is None or row["status"] == REQUESTED:
            # Before its verdict (or an id that never comes): remembered until the verdict is routed.
            self.counts["on_demand_early"] += 1
            waiting = orjson.dumps(requested_row(txid, method, source, now))
            self.writer.write(stream, event, self.waiting, key, waiting)
            return []
        done = self._asked_again(stream, event, key, row, method)
        if done is not None:
            return done
        self.counts["on_demand"] += 1
        request = {
            **row["request"],
            "priority": "high",
            "on_demand": True,
            "queued_at": now,
            "method": method,
        }
        return self._publish(stream, event, key, new_row(request, "pending", source))

    def verdicts_to_read(self, stream: StreamT, events: Sequence[EventT]) -> dict[str, tuple[int, str]]:
        """The verdicts this batch's on-demand counterfactuals need read back (``VerdictReader``):
        transaction id → (partition, scored_at), for those whose contributions row says the
        verdict came and whose counterfactual is not in flight or done already."""
        wanted: dict[str, tuple[int, str]] = {}
        for event in events:
            message = event.message
            if message.topic != topics.EXPLAIN_REQUESTS:
                continue
            try:
                asked = validate_explain_request(
                    message.value, message.key, METHODS, self.settings.max_message_bytes
                )
            except InvalidInput:
                continue  # ``route`` refuses it with its reason
            txid = str(asked["transaction_id"])
            if kind_of(asked) != COUNTERFACTUAL:
                continue
            row = self._counterfactual_row(stream, event, txid)
            if row is not None and not on_demand_wanted(row, SPLIT_SEARCH):
                continue
            verdict_row = self._verdict_row(stream, event, txid)
            if verdict_row is not None:
                wanted[txid] = (message.partition, str(verdict_row["request"]["verdict_at"]))
        return wanted

    def _counterfactual_row(self, stream: StreamT, event: EventT, txid: str) -> dict[str, Any] | None:
        """The transaction's counterfactual row, unless there is none or only a request waiting."""
        row = self._row(stream, event, row_key(txid, COUNTERFACTUAL))
        return None if row is None or row["status"] == REQUESTED else row

    def _verdict_row(self, stream: StreamT, event: EventT, txid: str) -> dict[str, Any] | None:
        """The contributions row, once the verdict came (its request says when it was scored)."""
        row = self._row(stream, event, txid.encode())
        return None if row is None or row["status"] == REQUESTED or not row.get("request") else row

    def _on_demand_counterfactual(self, stream: StreamT, event: EventT, txid: str, now: str) -> list[Send]:
        key = row_key(txid, COUNTERFACTUAL)
        source = source_of(event)
        row = self._counterfactual_row(stream, event, txid)
        if row is not None:
            done = self._asked_again(stream, event, key, row, SPLIT_SEARCH)
            if done is not None:
                return done
        verdict_row = self._verdict_row(stream, event, txid)
        if verdict_row is None:
            # Before its verdict (or an id that never comes): routed with the verdict (_counterfactual).
            self.counts["on_demand_early"] += 1
            waiting = {**requested_row(txid, SPLIT_SEARCH, source, now), "kind": COUNTERFACTUAL}
            self.writer.write(stream, event, self.waiting, key, orjson.dumps(waiting))
            return []
        self.counts["on_demand_counterfactual"] += 1
        verdict = self.verdicts_read.get(txid, "the verdict was not read back")
        if isinstance(verdict, str) or verdict.get("replay") is None:
            why = verdict if isinstance(verdict, str) else f"the verdict of {txid} carries no card state"
            contributions = {k: v for k, v in verdict_row["request"].items() if k != "uncertainty"}
            base = {**contributions, "priority": "high", "on_demand": True, "queued_at": now}
            pending = new_row({**base, "kind": COUNTERFACTUAL}, "pending", source)
            gone = failed(pending, FailureCode.VERDICT_UNAVAILABLE, why, now)
            self.writer.write(stream, event, self.explanations, key, orjson.dumps(to_record(gone)))
            return []
        request = explain_request(verdict, "high", now, on_demand=True, kind=COUNTERFACTUAL)
        return self._publish(stream, event, key, new_row(request, "pending", source))

    def _asked_again(
        self, stream: StreamT, event: EventT, key: bytes, row: dict[str, Any], method: str
    ) -> list[Send] | None:
        """For an on-demand request whose kind has a row already: what a replay of the message
        that wrote it left undone, nothing when it is in flight or done, None: compute it."""
        replay = replay_action(row, source_of(event))
        if replay is not None:  # replayed after a stop
            return self._replayed(stream, event, key, row, replay)
        if not on_demand_wanted(row, method):
            self.counts["on_demand_deduplicated"] += 1
            return []
        return None

    def _replayed(
        self, stream: StreamT, event: EventT, key: bytes, row: dict[str, Any], action: RouteAction
    ) -> list[Send]:
        """The message that wrote ``row``, replayed after a stop (not acked: a request handed to
        the workers directly is acked once its explanation is final): whatever it left undone is
        done again. The local store may hold a row whose record a SIGKILL lost, so a pending or
        finished row is written again (the same bytes if it was not lost)."""
        self.counts[f"replayed_{action}"] += 1
        if action is RouteAction.ANNOUNCE:
            self.writer.write(stream, event, self.explanations, key, orjson.dumps(to_record(row)))
            return []
        if action is RouteAction.RESEND:
            return self._publish(stream, event, key, row)
        return [_request_send(row["request"], event)]

    def _publish(self, stream: StreamT, event: EventT, key: bytes, row: dict[str, Any]) -> list[Send]:
        """The pending row, whose changelog record is the pending update, then the request.
        Written again on a resend too: the local store may hold a row whose record a SIGKILL
        lost, and the update must be out before the request leaves (same bytes if it was)."""
        self.writer.write(stream, event, self.explanations, key, orjson.dumps(to_record(row)))
        return [_request_send(row["request"], event)]


def _request_send(request: Mapping[str, Any], event: EventT) -> Send:
    """A request on its priority's topic, keyed by its transaction id (the contract; the row's
    key names the kind too), in the routed event's partition."""
    key = str(request["transaction_id"]).encode()
    return topics.EXPLAIN_TOPICS[request["priority"]], key, orjson.dumps(request), event.message.partition


@dataclass
class _Batch:
    events: Sequence[EventT]
    routed: list[tuple[EventT, list[Send]]]
    rows: int
    routed_at: float  # monotonic, once routed (table rows written locally, sends prepared)


async def _publish(
    batches: asyncio.Queue[_Batch],
    stream: StreamT,
    writer: TableWriter,
    urgent: Sink,
    router: Router,
    stats: BatchTimings,
    hand_over: HandOver,
    acks: InOrderAcks,
) -> None:
    """Second stage: makes each routed batch durable and visible, in routing order, while the
    next batch is already being routed (the router does not sit idle through two round trips).
    Per batch: rows (their records are the pending updates) acked; then each request handed
    straight to this process's workers when their queue has room (no record: the event stays
    unacked until its explanation is final, so a replay after a stop or a rebalance finds it),
    else published on its ``explain.<priority>`` topic (a full queue: the topic is the durable
    backlog) and acked; then every event not handed over is acked.

    High requests go through their own producer (``urgent``): one waiting for room is not
    held back behind every low request of the batch."""
    sink = writer.sink
    while True:
        batch = await batches.get()
        began = time.monotonic()
        if batch.rows:
            await writer.flush()  # rows first: a request always has its row and update
        rows_done = time.monotonic()
        handed: set[int] = set()  # ids of the events the workers ack
        try:
            for event, sends in batch.routed:
                for topic, key, value, partition in sends:
                    priority = _PRIORITY_OF.get(topic)
                    # Each kind's request may be handed over: the event is acked once every
                    # one handed is final (``InOrderAcks.also`` for the second on).
                    if priority is not None and hand_over(stream, event, priority, value):
                        if id(event) in handed:
                            acks.also(event)
                        handed.add(id(event))
                        router.counts["handed_over"] += 1
                        continue
                    to = urgent if priority == "high" else sink
                    to.produce(topic, key, value, partition, about=source_of(event))
        except DeliveryFailed as exc:  # refused at once, after the sink's retries: stop, never skip
            give_up(exc)
        try:
            # Through the writer: rows of the next batch, routed meanwhile, may be acked by this
            # flush too, and their stores must learn those persisted offsets.
            await asyncio.gather(urgent.flush(), writer.flush())
        except DeliveryFailed as exc:
            give_up(exc)
        for event in batch.events:  # in offset order behind any handed-over event still open
            if id(event) not in handed:
                await acks.done(event)
        done = time.monotonic()
        stats.add(
            len(batch.events), queue=began - batch.routed_at, rows=rows_done - began, sends=done - rows_done
        )


def router_agent(parts: ExplainerParts) -> Callable[[StreamT], AsyncIterator[Any]]:
    """The agent over ``verdicts`` and ``explain.requests`` (``app.explainer.build``)."""
    settings, tables, router_acks = parts.settings, parts.tables, parts.acks

    async def route(stream: StreamT) -> AsyncIterator[Any]:
        async for routed in _route(stream, settings, tables, parts.hand_over, router_acks):
            yield routed

    return route


async def _route(
    stream: StreamT,
    settings: ExplainerSettings,
    tables: ExplanationTables,
    hand_over: HandOver,
    router_acks: InOrderAcks,
) -> AsyncIterator[int]:
    sink = named_sink(settings, "explainer-router")
    urgent = named_sink(settings, "explainer-router-high")
    writer = TableWriter(sink, (tables.explanations, tables.waiting))
    router = Router(writer, tables, PriorityRules.from_settings(settings), settings)
    reader = VerdictReader(settings)
    stats = BatchTimings(settings.explain_stats_every_s)
    batches: asyncio.Queue[_Batch] = asyncio.Queue(maxsize=2)
    publisher = asyncio.ensure_future(
        _publish(batches, stream, writer, urgent, router, stats, hand_over, router_acks)
    )
    try:
        async for events in micro_batches(stream, ROUTE_BATCH_MAX, ROUTE_BATCH_WITHIN_S, ack=False):
            if publisher.done():
                publisher.result()  # the publishing stage failed: fail the worker with it
            began, now, rows_before = time.monotonic(), utc_now(), writer.pending
            for event in events:
                router_acks.track(stream, event)
            checked = router.check(events)
            wanted = router.verdicts_to_read(stream, events)
            router.verdicts_read = await asyncio.to_thread(reader.read_many, wanted) if wanted else {}
            routed = [(e, router.route(stream, e, now, c)) for e, c in zip(events, checked, strict=True)]
            routed_at = time.monotonic()
            stats.seconds["route"] += routed_at - began
            await batches.put(_Batch(events, routed, writer.pending - rows_before, routed_at))
            if stats.due():
                log.info(
                    "router totals: %s; %s; events held for in-order acks %d",
                    dict(sorted(router.counts.items())), stats.line(), router_acks.held(),
                )  # fmt: skip
            yield len(events)
    finally:
        publisher.cancel()
        reader.close()
