"""The explanation-gap monitor behind ``fraudlens lag``.

What it reports, and where each figure comes from:

- **queue depth** per priority: requests waiting *and* in progress. Most requests are handed
  straight to an explainer's in-process queue and never appear on ``explain.<priority>`` (only a
  full queue publishes them there), so the depth is the larger of two counts: transactions
  whose latest update read is ``pending`` or ``calculating`` (updates are read from the window's
  start on the first call, so a request routed before it is not seen there), and, for every
  partition of ``explain.<priority>``, the end offset minus the explainer group's committed
  offset (the earliest retained offset when the group has none; committed once complete).
- **gap** per priority (verdict made → explanation complete, ``timings.verdict_to_complete_ms``)
  p50/p95/p99 over the explanations completed in the sliding window, read from
  ``explanation.updates``.
- **rates**: in = requests routed (``pending`` updates) per second, out = explanations finished
  (complete or failed) per second, both over the window.
- **scaling hint**: from the measured rate per explainer process (out rate / group members), how
  many processes would drain the backlog within the target time while keeping up with the
  incoming rate.

Pure parts (:class:`GapWindow`, :func:`scaling_hint`, :func:`percentiles`) are separate from the
Kafka reads (:class:`LagMonitor`) so they can be tested without a broker.
"""

from __future__ import annotations

import math
import time
import uuid
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from app.kafka import topics
from app.kafka.admin import client_config
from app.records.contracts import utc_seconds
from app.records.kinds import CONTRIBUTIONS
from app.settings import Settings

PRIORITIES = ("high", "normal", "low")
FINISHED = ("complete", "failed")
IN_FLIGHT = ("pending", "calculating")


def percentiles(values: Iterable[float], qs: Iterable[float] = (50, 95, 99)) -> dict[str, float | None]:
    """Linear-interpolated percentiles (numpy's default); None for an empty sample."""
    sample = np.asarray(list(values), dtype=np.float64)
    return {f"p{q:g}": (float(np.percentile(sample, q)) if sample.size else None) for q in qs}


@dataclass
class GapWindow:
    """Explanation updates of the last ``window_s`` seconds (by their own timestamps)."""

    window_s: float
    # (t, priority, gap, kind): each kind of explanation (issue 20) has its own gap
    finished: deque[tuple[float, str, float | None, str]] = field(default_factory=deque)
    routed: deque[float] = field(default_factory=deque)
    in_flight: dict[tuple[str, str], str] = field(default_factory=dict)  # (txid, kind) -> priority
    ignored: int = 0

    def add(self, update: Mapping[str, Any]) -> None:
        """One ``explanation.updates`` record (parsed); malformed ones are counted and skipped."""
        status, priority = update.get("status"), update.get("priority")
        raw_timings = update.get("timings")
        timings: Mapping[str, Any] = raw_timings if isinstance(raw_timings, dict) else {}
        kind = update.get("kind", CONTRIBUTIONS)
        if priority not in PRIORITIES or not isinstance(kind, str):
            self.ignored += 1
            return
        self._track(update.get("transaction_id"), kind, status, priority)
        if status == "pending":
            moment = utc_seconds(timings.get("queued_at")) or utc_seconds(update.get("updated_at"))
            if moment is None:
                self.ignored += 1
                return
            self.routed.append(moment)
        elif status in FINISHED:
            moment = utc_seconds(timings.get("completed_at")) or utc_seconds(update.get("updated_at"))
            if moment is None:
                self.ignored += 1
                return
            gap = timings.get("verdict_to_complete_ms") if status == "complete" else None
            gap_ms = float(gap) if isinstance(gap, (int, float)) else None
            self.finished.append((moment, priority, gap_ms, kind))

    def _track(self, txid: Any, kind: str, status: Any, priority: str) -> None:
        if not isinstance(txid, str):
            return
        if status in IN_FLIGHT:
            self.in_flight[(txid, kind)] = priority
        elif status in FINISHED:
            self.in_flight.pop((txid, kind), None)

    def waiting(self, kind: str | None = None) -> dict[str, int]:
        """Requests whose latest update read is pending or calculating, per priority (of
        ``kind``; None: of every kind)."""
        counts = {priority: 0 for priority in PRIORITIES}
        for (_, of), priority in self.in_flight.items():
            if kind is None or of == kind:
                counts[priority] += 1
        return counts

    def kinds(self) -> list[str]:
        """The kinds seen in the window or in flight, contributions first."""
        seen = {kind for *_, kind in self.finished} | {kind for _, kind in self.in_flight}
        return [CONTRIBUTIONS, *sorted(seen - {CONTRIBUTIONS})]

    def evict(self, now: float) -> None:
        horizon = now - self.window_s
        while self.finished and self.finished[0][0] < horizon:
            self.finished.popleft()
        while self.routed and self.routed[0] < horizon:
            self.routed.popleft()

    def gaps(self, kind: str = CONTRIBUTIONS) -> dict[str, dict[str, Any]]:
        """Verdict-to-complete percentiles per priority, of one kind (each kind costs its own)."""
        out: dict[str, dict[str, Any]] = {}
        for priority in PRIORITIES:
            values = [
                gap for _, p, gap, k in self.finished if p == priority and k == kind and gap is not None
            ]
            out[priority] = {"n": len(values), **percentiles(values)}
        return out

    def rates(self, now: float, since: float) -> tuple[float, float]:
        """(in, out) per second over the window, or over the time observed if shorter."""
        span = max(1e-9, min(self.window_s, now - since))
        return len(self.routed) / span, len(self.finished) / span


def scaling_hint(
    backlog: int, in_rate: float, out_rate: float, processes: int, target_s: float
) -> dict[str, Any]:
    """How many explainer processes drain ``backlog`` within ``target_s`` and keep up with ``in_rate``.

    The per-process rate is measured (``out_rate / processes``); with no explanations finished in the
    window there is nothing to extrapolate from, and the hint says so.
    """
    if processes <= 0 or out_rate <= 0:
        reason = "no explainer running" if processes <= 0 else "no explanations finished in the window"
        return {"per_process_per_s": None, "processes_needed": None, "reason": reason}
    per_process = out_rate / processes
    needed_rate = in_rate + backlog / target_s
    needed = max(1, math.ceil(needed_rate / per_process - 1e-9))
    drain_s = backlog / (out_rate - in_rate) if out_rate > in_rate else None
    return {
        "per_process_per_s": round(per_process, 2),
        "processes_needed": needed,
        "drain_s_at_current_rate": None if drain_s is None else round(drain_s, 1),
        "reason": None if out_rate > in_rate or backlog == 0 else "the backlog grows at the current rate",
    }


class LagMonitor:
    """Reads queue depths and explanation updates from Kafka (confluent-kafka, no group joined)."""

    def __init__(self, settings: Settings, window_s: float, target_s: float) -> None:
        from confluent_kafka import Consumer
        from confluent_kafka.admin import AdminClient

        self.settings, self.target_s = settings, target_s
        self.window = GapWindow(window_s)
        self.group = settings.explainer_group
        base = {"enable.auto.commit": False, "log_level": 2}
        # A group id is needed to ask for the explainers' committed offsets; assign() joins nothing.
        self._offsets = Consumer(client_config(settings, **base, **{"group.id": self.group}))
        self._updates = Consumer(
            client_config(settings, **base, **{"group.id": f"fraudlens-lag-{uuid.uuid4().hex[:8]}"})
        )
        self._admin = AdminClient(client_config(settings))
        self.started = time.time()
        self._assigned = False

    def _partitions(self, topic: str) -> list[int]:
        metadata = self._offsets.list_topics(topic, timeout=10).topics.get(topic)
        if metadata is None or metadata.error is not None:
            raise LookupError(f"topic {topic!r} does not exist on {self.settings.bootstrap_servers}")
        return sorted(metadata.partitions)

    def queue_depths(self) -> dict[str, int]:
        from confluent_kafka import TopicPartition

        depths: dict[str, int] = {}
        for priority, topic in topics.EXPLAIN_TOPICS.items():
            tps = [TopicPartition(topic, p) for p in self._partitions(topic)]
            committed = {tp.partition: tp.offset for tp in self._offsets.committed(tps, timeout=10)}
            depth = 0
            for tp in tps:
                low, high = self._offsets.get_watermark_offsets(tp, timeout=10)
                start = committed.get(tp.partition, -1)
                depth += max(0, high - (start if start >= 0 else low))
            depths[priority] = depth
        return depths

    def processes(self) -> int:
        """Members of the explainer group (one per explainer process)."""
        try:
            future = self._admin.describe_consumer_groups([self.group])[self.group]
            return len(future.result(timeout=10).members)
        except Exception:  # an unknown or dead group has no members
            return 0

    def read_updates(self) -> None:
        """Consume ``explanation.updates`` up to its current end (from the window start, first time)."""
        from confluent_kafka import TopicPartition

        topic = topics.EXPLANATION_UPDATES
        tps = [TopicPartition(topic, p) for p in self._partitions(topic)]
        ends = {tp.partition: self._offsets.get_watermark_offsets(tp, timeout=10)[1] for tp in tps}
        if not self._assigned:
            since_ms = int((time.time() - self.window.window_s) * 1000)
            wanted = [TopicPartition(topic, tp.partition, since_ms) for tp in tps]
            starts = self._updates.offsets_for_times(wanted, timeout=10)
            self._updates.assign([TopicPartition(topic, s.partition, max(s.offset, 0)) for s in starts])
            self._assigned = True
            positions = {s.partition: (s.offset if s.offset >= 0 else ends[s.partition]) for s in starts}
        else:
            positions = {tp.partition: tp.offset for tp in self._updates.position(tps)}
        deadline = time.monotonic() + 30
        while any(positions.get(p, 0) < end for p, end in ends.items()) and time.monotonic() < deadline:
            for message in self._updates.consume(1000, timeout=0.2):
                partition, offset, value = message.partition(), message.offset(), message.value()
                if message.error() is not None or partition is None or offset is None:
                    continue
                positions[partition] = offset + 1
                try:
                    update = orjson.loads(value or b"")
                except orjson.JSONDecodeError:
                    self.window.ignored += 1
                    continue
                if isinstance(update, dict):
                    self.window.add(update)

    def snapshot(self) -> dict[str, Any]:
        self.read_updates()
        now = time.time()
        self.window.evict(now)
        published, waiting = self.queue_depths(), self.window.waiting()
        depths = {p: max(published[p], waiting[p]) for p in PRIORITIES}
        in_rate, out_rate = self.window.rates(now, self.started - self.window.window_s)
        processes = self.processes()
        backlog = sum(depths.values())
        return {
            "at": now,
            "window_s": self.window.window_s,
            "queue_depth": depths,
            "backlog": backlog,
            "gap_ms": self.window.gaps(),
            # every kind (issue 20): its own gaps and requests in flight per priority
            "kinds": {
                kind: {"gap_ms": self.window.gaps(kind), "in_flight": self.window.waiting(kind)}
                for kind in self.window.kinds()
            },
            "in_per_s": round(in_rate, 2),
            "out_per_s": round(out_rate, 2),
            "explainers": processes,
            "target_s": self.target_s,
            "hint": scaling_hint(backlog, in_rate, out_rate, processes, self.target_s),
            "ignored_updates": self.window.ignored,
        }

    def close(self) -> None:
        self._offsets.close()
        self._updates.close()


def render(snapshot: Mapping[str, Any]) -> str:
    """The human-readable report."""

    def ms(value: float | None) -> str:
        return "-" if value is None else f"{value:,.0f} ms"

    def row(label: str, depth: int, gap: Mapping[str, Any]) -> str:
        gaps = " ".join(f"{ms(gap[q]):>10}" for q in ("p50", "p95", "p99"))
        return f"{label:<8} {depth:>8,} {gaps} {gap['n']:>7,}"

    lines = [f"{'priority':<8} {'queue':>8} {'gap p50':>10} {'p95':>10} {'p99':>10} {'n':>7}"]
    lines += [row(p, snapshot["queue_depth"][p], snapshot["gap_ms"][p]) for p in PRIORITIES]
    for kind, figures in snapshot.get("kinds", {}).items():
        if kind == CONTRIBUTIONS:
            continue  # the table above
        lines.append(f"{kind}:")
        for p in PRIORITIES:
            if figures["gap_ms"][p]["n"] or figures["in_flight"][p]:
                lines.append(row(f"  {p}", figures["in_flight"][p], figures["gap_ms"][p]))
    hint = snapshot["hint"]
    lines.append(
        f"in {snapshot['in_per_s']:.1f}/s  out {snapshot['out_per_s']:.1f}/s  "
        f"explainers {snapshot['explainers']}  (window {snapshot['window_s']:g} s)"
    )
    if hint["processes_needed"] is None:
        lines.append(f"hint: {hint['reason']}")
    else:
        drain = hint.get("drain_s_at_current_rate")
        lines.append(
            f"hint: {hint['per_process_per_s']}/s per explainer; {hint['processes_needed']} explainer(s) "
            f"drain the backlog of {snapshot['backlog']:,} within {snapshot['target_s']:g} s"
            + (f" (at the current rate: {drain:g} s)" if drain is not None and snapshot["backlog"] else "")
        )
    return "\n".join(lines)
