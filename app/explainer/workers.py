"""Explanation workers (explainer role): ``explain.high|normal|low`` → ``explanation.updates``.

Faust cannot prioritise between topics, so each priority topic has a thin agent that moves its
events into one in-process ``AgingScheduler`` (bounded per priority: a full queue blocks the
agent, its stream buffer fills and Faust stops fetching that partition), and one compute task
takes batches out of it: the aged quota first, then high, normal, low. Batches are sized by a
time budget (``BatchSizer``): the batch in flight is what new high work waits for. Events are
acked by the finishing task, never by the agents.

Per batch, each request under its own event (its partition's table store). A row's changelog
record is its ``explanation.updates`` record (``app.explainer.explanation_tables``): writing a row *is*
publishing its update.
  1. dedup against the ``explanations`` row (finished for this model version and method: no
     computation, its final row written again, byte for byte: the local store can hold a final
     row whose record a SIGKILL lost, and it would otherwise stay unannounced);
     a request started ``explain_max_attempts`` times already fails (``attempts_exhausted``);
  2. rows → ``calculating`` (attempts + 1);
  3. SHAP on a thread: explainer per model version (``ExplainerCache``), lookups in the
     in-memory explanation cache (``ExplanationMemo``; no table: DESIGN-NOTES, records per
     transaction), ``explain_batch`` for the misses; the batch's counterfactuals (issue 20) are
     searched one by one on the same thread after it (``work.counterfactuals``);
  4. rows → ``complete`` | ``failed`` written to the local stores; then,
     on the finishing task while the next batch computes, their records (the updates) acked by
     the broker; then the events. A worker killed anywhere before the ack
     leaves the events uncommitted: the replay finds the row ``calculating`` (or already
     finished) and computes it again (or skips it).
Requests of an older consumer generation (a rebalance happened since they were fetched) are
dropped unacked: the partition's new owner, possibly this worker, gets them again.

Hand-over: the router of this process owns the same partitions (one partition owns a
transaction), so once a request's ``pending`` row (its update) is acked it hands the request
straight to the scheduler (``hand_over``), under the event that caused it (the verdict or the
on-demand request), with no ``explain.<priority>`` record: that event is the durable copy. It
stays unacked until the explanation is final (the finishing task marks it done, and
``router_acks`` acks it once every earlier event of its partition is done too: Faust commits
past an out-of-order ack, ``app.explainer.acks``), so after a stop or a rebalance the partition's
owner reads it again and the router re-queues what its row says is left (``RouteAction``).
Only while fewer than ``FRAUDLENS_EXPLAIN_HANDOVER_MAX`` requests of its priority wait (and the
queue has room) is a request handed over; past that the router publishes the record: the topic
then holds the backlog, and Faust pauses its fetches while the queue stays full, as before.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
from faust.types import EventT, StreamT

from app.explain.core import ExplainerCache
from app.explain.messages import FailureCode
from app.explain.scheduler import AgingScheduler, BatchSizer, Queued
from app.explain.state import (
    WorkAction,
    calculating,
    failed,
    finished,
    found,
    from_record,
    kind_of,
    method_of,
    to_record,
    work_action,
)
from app.explain.work import ExplanationMemo, Outcome, Prepared, compute, counterfactuals, prepare
from app.explainer.skips import Skips, checked_record
from app.explainer.table_io import TableWriter, named_sink, source_of, stored_json, utc_now
from app.records.kinds import COUNTERFACTUAL, row_key
from app.runtime import metrics

if TYPE_CHECKING:
    from app.explainer import ExplainerParts

log = logging.getLogger(__name__)
SCHEMA = "explain_request"  # what a record on explain.high|normal|low must be


@dataclass(frozen=True)
class Work:
    stream: StreamT
    event: EventT
    handed_request: bytes | None = None  # handed over by the router; ``event`` is then its cause


class WorkQueue:
    """The scheduler with asyncio wake-ups: agents ``put``, the compute task ``take``s."""

    def __init__(self, aging_s: float, capacity: int, aged_share: float = 1.0) -> None:
        self.scheduler: AgingScheduler[Work] = AgingScheduler(aging_s, capacity, aged_share)
        self._arrived = asyncio.Event()
        self._room = asyncio.Event()

    async def put(self, priority: str, work: Work, queued_at: float) -> None:
        while not self.scheduler.has_room(priority):
            self._room.clear()
            await self._room.wait()
        self.scheduler.put(priority, work, queued_at)
        self._arrived.set()

    def offer(self, priority: str, work: Work, queued_at: float, below: int) -> bool:
        """``put`` if there is room now and fewer than ``below`` of its priority wait (False:
        not queued)."""
        if not self.scheduler.has_room(priority) or self.scheduler.size(priority) >= below:
            return False
        self.scheduler.put(priority, work, queued_at)
        self._arrived.set()
        return True

    async def take(self, max_items: int, within_s: float) -> list[Queued[Work]]:
        """A batch: waits for the first request, then up to ``within_s`` to fill the batch."""
        while not len(self.scheduler):
            self._arrived.clear()
            await self._arrived.wait()
        deadline = time.monotonic() + within_s
        while len(self.scheduler) < max_items and (left := deadline - time.monotonic()) > 0:
            self._arrived.clear()
            try:
                await asyncio.wait_for(self._arrived.wait(), left)
            except TimeoutError:
                break
        batch = self.scheduler.take(max_items, time.time())
        self._room.set()
        return batch


@dataclass(frozen=True)
class HandOver:
    """The router's hand-over of a request whose pending row is acked (see above)."""

    queue: WorkQueue
    enabled: bool  # FRAUDLENS_EXPLAIN_FAST_PATH
    below: int  # FRAUDLENS_EXPLAIN_HANDOVER_MAX

    def __call__(self, stream: StreamT, cause: EventT, priority: str, request: bytes) -> bool:
        """False: no room in that priority's queue (or hand-over off), so the router publishes
        the record. Past the hand-over bound a backlog lives on its topic, not in verdicts held
        for in-order acks."""
        if not self.enabled:
            return False
        return self.queue.offer(priority, Work(stream, cause, request), time.time(), self.below)


def feeder(queue: WorkQueue, priority: str) -> Callable[[StreamT], Awaitable[None]]:
    """The agent of ``explain.<priority>``: moves its events into the queue, unacked."""

    async def feed(stream: StreamT) -> None:
        stream.enable_acks = False  # the compute task acks each event once its row is final
        async for event in stream.events():
            queued_at = event.message.timestamp or time.time()
            await queue.put(priority, Work(stream, event), queued_at)

    return feed


@dataclass
class _Job:
    queued: Queued[Work]
    request: dict[str, Any]
    row: dict[str, Any]
    key: bytes
    cache_key: str | None = None


@dataclass
class _Stats:
    """Counts since start (logged every ``explain_stats_every_s``; the tests read them)."""

    every_s: float  # FRAUDLENS_EXPLAIN_STATS_EVERY_S
    counts: Counter[str] = field(default_factory=Counter)
    batches: int = 0
    clock: Callable[[], float] = time.monotonic
    logged_at: float = field(default=-1.0)
    logged_batches: int = 0
    backlog: bool = False  # more than a batch was waiting after some batch since the last line

    def __post_init__(self) -> None:
        self.logged_at = self.clock()

    def log(self, queue: AgingScheduler[Work], batch_size: int) -> None:
        """Every ``explain_stats_every_s`` while batches run, and once when a backlog drains.

        A backlog is more waiting than the next batch takes. At light load every batch empties
        the queue: "the queue ran empty" alone logged after every batch (9,000 lines in 3
        minutes of ``make demo``, issue 17)."""
        now, waiting = self.clock(), len(queue)
        self.backlog = self.backlog or waiting >= batch_size
        drained = self.backlog and not waiting
        if self.batches == self.logged_batches or (not drained and now - self.logged_at < self.every_s):
            return
        self._line(queue, batch_size, now)

    def tick(self, queue: AgingScheduler[Work], batch_size: int) -> None:
        """Called every interval by a timer: the last counts of a burst that ended between two
        lines, without a backlog, are logged once the interval is up (no batch follows to do it)."""
        now = self.clock()
        if self.batches != self.logged_batches and now - self.logged_at >= self.every_s:
            self._line(queue, batch_size, now)

    def _line(self, queue: AgingScheduler[Work], batch_size: int, now: float) -> None:
        self.logged_at, self.logged_batches, self.backlog = now, self.batches, False
        c = self.counts
        computed = c["computed"] + c["cache_hits"]
        log.info(
            "explainer pid %d: explained %d (complete %d, failed %d, cache hits %d, hit rate %.1f%%), "
            "skipped %d, announced again %d, aged %d, batches %d (mean %.1f, size now %d); "
            "by priority high %d normal %d low %d; queued %s",
            os.getpid(), computed, c["complete"], c["failed"], c["cache_hits"],
            100.0 * c["cache_hits"] / computed if computed else 0.0, c["skipped"], c["announced"], c["aged"],
            self.batches, computed / self.batches if self.batches else 0.0, batch_size,
            c["high"], c["normal"], c["low"], {p: queue.size(p) for p in ("high", "normal", "low")},
        )  # fmt: skip


@dataclass(frozen=True)
class _Done:
    """A computed batch whose final rows are in the local stores, waiting to be made durable."""

    batch: Sequence[Queued[Work]]


class Explaining:
    """The compute task's state: sink, explainers per model version, cache, counters.

    Two tasks: ``run`` takes and computes batches; ``finishing`` makes each computed batch
    durable (rows, so updates, acked, then events acked), in batch order, while the next batch
    already computes: the SHAP thread does not sit idle through the broker round trip.
    """

    def __init__(self, parts: ExplainerParts) -> None:
        settings = self.settings = parts.settings
        self.app, self.queue, self.acks = parts.app, parts.queue, parts.acks
        self.explanations = parts.tables.explanations
        self.sink = named_sink(settings, "explainer-worker")
        self.writer = TableWriter(self.sink, (self.explanations,))
        self.explainers = ExplainerCache(settings.models_dir)
        self.memo = ExplanationMemo(settings.explain_cache_max)
        self.executor = ThreadPoolExecutor(1, thread_name_prefix="shap")
        budget_s, most = settings.explain_batch_budget_ms / 1000, settings.explain_batch_max
        self.sizer = BatchSizer(budget_s, most, min_items=min(8, most))
        self.done: asyncio.Queue[_Done] = asyncio.Queue(maxsize=2)
        self.stats = _Stats(settings.explain_stats_every_s)
        self.skips = Skips(settings.explain_stats_every_s)

    async def run(self) -> None:
        settings, work_queue = self.settings, self.queue
        for priority in ("high", "normal", "low"):
            depth = metrics.EXPLAIN_QUEUE_DEPTH.labels(priority=priority)
            depth.set_function(lambda p=priority: work_queue.scheduler.size(p))  # type: ignore[misc]
        stop_metrics = await asyncio.to_thread(metrics.serve_in_thread, settings)
        finishing = asyncio.ensure_future(self.finishing())
        ticker = asyncio.ensure_future(self._stats_ticker())
        try:
            while True:
                batch = await work_queue.take(self.sizer.size(), settings.explain_batch_within_s)
                if finishing.done():
                    finishing.result()  # the finishing task failed: fail the worker with it
                current = [q for q in batch if self._current(q.item.event)]
                if current:
                    await self.process(current)
        finally:
            finishing.cancel()
            ticker.cancel()
            await asyncio.to_thread(stop_metrics)

    def _current(self, event: EventT) -> bool:
        """Fetched in the consumer's current generation (no rebalance since)."""
        return bool(event.message.generation_id == self.app.consumer_generation_id)

    async def _stats_ticker(self) -> None:
        while True:
            await asyncio.sleep(self.settings.explain_stats_every_s)
            self.stats.tick(self.queue.scheduler, self.sizer.size())

    async def process(self, batch: Sequence[Queued[Work]]) -> None:
        jobs = self._start(batch, utc_now())
        outcomes = await self._explain(jobs)
        if not all(self._current(q.item.event) for q in batch):
            return  # a rebalance since: the new owner of these partitions computes them again
        completed_at = utc_now()
        for job, outcome in zip(jobs, outcomes, strict=True):
            self._finish(job, outcome, completed_at)
        await self.done.put(_Done(batch))

    async def finishing(self) -> None:
        while True:
            done = await self.done.get()
            await self.writer.flush()  # final rows (their updates) acked, then the events
            for queued in done.batch:
                if queued.item.handed_request is None:  # a record of explain.<priority>: in order
                    await queued.item.stream.ack(queued.item.event)
                else:  # a handed-over request's cause, a router event: after its partition's earlier
                    await self.acks.done(queued.item.event)
            self.stats.batches += 1
            self.stats.log(self.queue.scheduler, self.sizer.size())

    def _start(self, batch: Sequence[Queued[Work]], started_at: str) -> list[_Job]:
        """Dedup, then rows → calculating (or failed for good); returns the jobs to compute."""
        settings, explanations = self.settings, self.explanations
        jobs: list[_Job] = []
        seen: set[bytes] = set()
        for queued in batch:
            work = queued.item
            stream, event = work.stream, work.event
            message = event.message
            if work.handed_request is not None:
                request = dict(orjson.loads(work.handed_request))
            else:  # parsed once: the checked object is the request (docs/cost.md, lever 6)
                checked, problem = checked_record(message.value, message.key, SCHEMA)
                if checked is None:  # only a misconfigured client writes these topics
                    self.skips.skip(event.message.topic, source_of(event), str(problem))
                    self.stats.counts["invalid"] += 1
                    continue  # acked with its batch: skipped, counted, logged (rate-limited)
                request = checked
            key = row_key(str(request["transaction_id"]), kind_of(request))
            request["method"] = method_of(request, settings.explain_method)
            row = from_record(stored_json(self.writer.get(stream, event, explanations, key)))
            action = work_action(row, request, settings.explain_max_attempts)
            self.stats.counts["handed" if work.handed_request else "from_topic"] += 1
            if key in seen:
                self.stats.counts["skipped"] += 1
                continue
            if action is WorkAction.ANNOUNCE and row is not None:  # finished before a stop: announce
                self.writer.write(stream, event, explanations, key, orjson.dumps(to_record(row)))
                self.stats.counts["announced"] += 1
                continue
            seen.add(key)
            row = calculating(row, request, started_at)
            if action is WorkAction.EXHAUSTED:
                reason = f"started {row['attempts'] - 1} times without finishing; the worker may crash on it"
                row = failed(row, FailureCode.ATTEMPTS_EXHAUSTED, reason, started_at)
                self.stats.counts["failed"] += 1
            self.writer.write(stream, event, explanations, key, orjson.dumps(to_record(row)))
            if action is WorkAction.COMPUTE:
                jobs.append(_Job(queued, request, row, key))
                self.stats.counts["aged"] += queued.aged
                self.stats.counts[request["priority"]] += 1
        return jobs

    async def _explain(self, jobs: Sequence[_Job]) -> list[Outcome]:
        """Each job's outcome, in job order: contributions in one SHAP hand-off (the batch
        sizer measures it), counterfactuals searched one by one on the same thread."""
        if not jobs:
            return []
        loop = asyncio.get_running_loop()
        searches = [i for i, job in enumerate(jobs) if kind_of(job.request) == COUNTERFACTUAL]
        shap = sorted(set(range(len(jobs))) - set(searches))
        outcomes: dict[int, Outcome] = {}
        if shap:
            computed = await loop.run_in_executor(
                self.executor,
                _explain_on_thread,
                self.explainers,
                self.memo,
                [jobs[i].request for i in shap],
                self.settings.explain_method,
                self.settings.explain_similar_cases,
            )
            for i, item, outcome in zip(shap, computed.prepared, computed.outcomes, strict=True):
                jobs[i].cache_key, outcomes[i] = item.cache_key, outcome
            self.sizer.measured(computed.misses, computed.cpu_s)
        if searches:
            searched = await loop.run_in_executor(
                self.executor, counterfactuals, self.explainers, [jobs[i].request for i in searches]
            )
            outcomes.update(zip(searches, searched, strict=True))
        return [outcomes[i] for i in range(len(jobs))]

    def _finish(self, job: _Job, outcome: Outcome, completed_at: str) -> None:
        stream, event = job.queued.item.stream, job.queued.item.event
        if outcome.counterfactual is not None:
            job.row = found(job.row, outcome.counterfactual, completed_at)
            self.stats.counts["counterfactuals"] += 1
        elif outcome.explanation is not None:
            job.row = finished(
                job.row, outcome.explanation, outcome.cache_hit, completed_at, outcome.similar_cases
            )
            self.stats.counts["cache_hits" if outcome.cache_hit else "computed"] += 1
            if not outcome.cache_hit and outcome.explanation.ok and job.cache_key is not None:
                self.memo.put(job.cache_key, outcome.explanation)
        else:
            code, reason = outcome.failure or (FailureCode.INTERNAL_ERROR, "no explanation")
            job.row = failed(job.row, code, reason, completed_at)
        self.stats.counts[job.row["status"]] += 1
        _observe(job.row, outcome)
        self.writer.write(stream, event, self.explanations, job.key, orjson.dumps(to_record(job.row)))


def _observe(row: dict[str, Any], outcome: Outcome) -> None:
    """Prometheus series of one finished explanation (``app.runtime.metrics``)."""
    status, priority = str(row["status"]), str(row.get("priority"))
    metrics.EXPLANATIONS.labels(status=status, priority=priority).inc()
    if outcome.explanation is not None:
        metrics.EXPLANATION_CACHE.labels(result="hit" if outcome.cache_hit else "miss").inc()
    if status == "failed":
        metrics.EXPLANATION_FAILURES.labels(reason=str(row.get("reason_code"))).inc()
    gap_ms = (row.get("timings") or {}).get("verdict_to_complete_ms")
    if status == "complete" and isinstance(gap_ms, int | float):
        metrics.EXPLANATION_GAP.labels(priority=priority).observe(gap_ms / 1000)


class _Computed(NamedTuple):
    prepared: list[Prepared]
    outcomes: list[Outcome]
    misses: int  # requests without a cached explanation
    cpu_s: float  # compute's CPU time on the thread


def _explain_on_thread(
    explainers: ExplainerCache,
    memo: ExplanationMemo,
    requests: Sequence[dict[str, Any]],
    method: str,
    similar_k: int = 0,
) -> _Computed:
    """``prepare``, the memo lookups and ``compute`` in one executor hand-off (docs/cost.md,
    lever 4). The cache is the in-memory memo alone (a changelog-backed cache table cost one
    broker record per computed explanation and added no hits on generator traffic: DESIGN-NOTES);
    only the loop writes it (``_finish``), after this call returned and before the next begins.

    ``cpu_s`` is ``compute``'s CPU time on this thread, what batch sizing measures: wall time
    would also count the waits for a core on a busy machine, and shrink batches until their
    fixed costs dominate."""
    prepared = prepare(explainers, requests, method)
    cached = [None if item.cache_key is None else memo.get(item.cache_key) for item in prepared]
    began = time.thread_time()
    outcomes = compute(prepared, cached, similar_k)
    return _Computed(prepared, outcomes, sum(c is None for c in cached), time.thread_time() - began)
