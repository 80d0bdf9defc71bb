"""Acks of the router's events in offset order, per partition, whoever finishes them.

The router's events (verdicts, on-demand requests) finish out of order: one whose request was
handed to this process's workers stays open until its explanation is final, while the events
after it (sampled out, deduplicated, published) are done at once. Faust commits the first run of
consecutive acked offsets of a partition (``Consumer._new_offset``) and its check for an unacked
head is off by one and skipped before the group's first commit, so an out-of-order ack can move
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

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from faust.types import EventT, StreamT


@dataclass
class _Open:
    stream: StreamT
    event: EventT
    deliveries: int = 1  # an offset delivered again (a seek back) is done when every delivery is


@dataclass
class _Partition:
    offsets: deque[int] = field(default_factory=deque)  # sorted: the head is the oldest open one
    open: dict[int, _Open] = field(default_factory=dict)


class InOrderAcks:
    def __init__(self) -> None:
        self.generation: int | None = None
        self._partitions: dict[Any, _Partition] = {}

    def held(self) -> int:
        """Events tracked and not acked yet (done or not)."""
        return sum(len(p.open) for p in self._partitions.values())

    def track(self, stream: StreamT, event: EventT) -> None:
        """An event as it is delivered, before it is routed."""
        message = event.message
        if not self._current(_generation(message)):
            return
        partition = self._partitions.setdefault(message.tp, _Partition())
        entry = partition.open.get(message.offset)
        if entry is not None:
            entry.deliveries += 1
            entry.stream, entry.event = stream, event
            return
        partition.open[message.offset] = _Open(stream, event)
        if partition.offsets and message.offset < partition.offsets[-1]:  # rare: a seek back
            partition.offsets = deque(sorted([*partition.offsets, message.offset]))
        else:
            partition.offsets.append(message.offset)

    async def done(self, event: EventT) -> None:
        """Its effects are durable: ack it, and every later one of its partition already done,
        once no earlier one is open."""
        message = event.message
        if _generation(message) != self.generation:
            return  # a rebalance since: never acked, the partition's owner reads it again
        partition = self._partitions.get(message.tp)
        entry = partition.open.get(message.offset) if partition is not None else None
        if partition is None or entry is None:
            return  # not tracked (delivered before this generation's first event): not ours
        entry.deliveries -= 1
        ready: list[_Open] = []
        while partition.offsets and partition.open[partition.offsets[0]].deliveries <= 0:
            ready.append(partition.open.pop(partition.offsets.popleft()))
        for finished in ready:  # collected first: an ack may yield to another done()
            await finished.stream.ack(finished.event)

    def _current(self, generation: int) -> bool:
        if self.generation is None or generation > self.generation:
            self.generation = generation  # a rebalance: what was open is the new owners' now
            self._partitions.clear()
        return generation == self.generation


def _generation(message: Any) -> int:
    generation = message.generation_id
    return -1 if generation is None else int(generation)
