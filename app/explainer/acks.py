"""Acks of the router's events in offset order, per partition, whoever finishes them.

The router's events (verdicts, on-demand requests) finish out of order: one whose request was
handed to this process's workers stays open until its explanation is final, while the events
after it (sampled out, deduplicated, published) are done at once. Faust commits the first run of
consecutive acked offsets of a partition (``Consumer._new_offset``) and its check for an unacked
head (upstream faust-streaming#312, fixed by #313 as ``min(acked) - committed > 1`` where the
committed offset is already the next one to read) is off by one in 0.15.3 and skipped before the
group's first commit (``if committed_offset:``), so an out-of-order ack can move
the committed offset past unfinished work, which a SIGKILL then loses (issue 18: the fault
suite's ``explainer_sigkill`` lost 563 of 9,677 explanations that way). This keeps what Faust
assumes: an event is acked only once it and every earlier event of its partition are done.

What it holds: the events of each partition from its oldest unfinished one on, i.e. the
verdicts that arrived while the oldest handed-over request waited. The router hands a request
over only while fewer than ``FRAUDLENS_EXPLAIN_HANDOVER_MAX`` (1,000) of its priority wait in
memory and publishes it on ``explain.<priority>`` past that, so a backlog lives on the topics,
not in the held events. A rebalance (a new consumer generation) drops them all unacked: the
partitions' new owners read them again.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from faust.types import EventT, StreamT


@dataclass
class _Open:
    event: EventT
    deliveries: int = 1  # an offset delivered again (a seek back) is done when every delivery is


@dataclass
class _Partition:
    stream: StreamT
    open: OrderedDict[int, _Open] = field(default_factory=OrderedDict)  # by offset: head first


class InOrderAcks:
    """``generation``: the consumer generation now (Faust's ``app.consumer_generation_id``)."""

    def __init__(self, generation: Callable[[], int | None]) -> None:
        self._generation = generation
        self._seen: int | None = None  # the generation what is held belongs to
        self._partitions: dict[Any, _Partition] = {}

    def held(self) -> int:
        """Events tracked and not acked yet (done or not)."""
        return sum(len(p.open) for p in self._partitions.values())

    def track(self, stream: StreamT, event: EventT) -> None:
        """An event as it is delivered, before it is routed."""
        message = event.message
        if not self._current(message):
            return
        partition = self._partitions.setdefault(message.tp, _Partition(stream))
        entry = partition.open.get(message.offset)
        if entry is not None:
            entry.deliveries += 1
            entry.event = event
            return
        last = next(reversed(partition.open), None)
        partition.open[message.offset] = _Open(event)
        if last is not None and message.offset < last:  # rare: a seek back
            partition.open = OrderedDict(sorted(partition.open.items()))

    def _open(self, event: EventT) -> tuple[_Partition, _Open] | None:
        """The partition and entry tracking ``event``; None if a rebalance came since (the
        partition's owner reads it again) or it was never tracked (not ours)."""
        message = event.message
        if not self._current(message):
            return None
        partition = self._partitions.get(message.tp)
        entry = partition.open.get(message.offset) if partition is not None else None
        return None if partition is None or entry is None else (partition, entry)

    def also(self, event: EventT) -> None:
        """One more ``done`` is owed for ``event`` before it counts as done: a second request of
        it (another kind) handed to the workers too."""
        found = self._open(event)
        if found is not None:
            found[1].deliveries += 1

    async def done(self, event: EventT) -> None:
        """Its effects are durable: ack it, and every later one of its partition already done,
        once no earlier one is open."""
        found = self._open(event)
        if found is None:
            return
        partition, entry = found
        entry.deliveries -= 1
        ready: list[EventT] = []
        while partition.open and next(iter(partition.open.values())).deliveries <= 0:
            ready.append(partition.open.popitem(last=False)[1].event)
        for finished in ready:  # collected first: an ack may yield to another done()
            await partition.stream.ack(finished)

    def _current(self, message: Any) -> bool:
        """Whether ``message`` is of the generation now; a new one drops what was held."""
        now = self._generation()
        if now != self._seen:
            self._seen = now  # a rebalance: what was open is the new owners' now
            self._partitions.clear()
        return bool(message.generation_id == now)
