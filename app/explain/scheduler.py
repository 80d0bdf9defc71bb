"""Priority with aging: high before normal before low, but nothing waits past the aging bound.

Pure (no asyncio, no Kafka): the explainer feeds requests in with the time they were queued
and takes batches out. A request is *aged* once it has waited ``aging_s`` since it was queued;
aged requests go first, oldest first, whatever their priority. So a request is never passed by
higher-priority work queued more than ``aging_s`` after it, and high-priority work waits behind
at most the requests that have already waited the full bound.

Each priority is one FIFO, so the requests of one topic partition leave in offset order (the
worker acks in that order, and Faust commits only contiguous acks).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Generic, TypeVar

PRIORITY_ORDER: tuple[str, ...] = ("high", "normal", "low")

T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class Queued(Generic[T]):
    item: T
    priority: str
    queued_at: float  # epoch seconds, when the request was published
    aged: bool = False  # set on the way out: taken because it reached the aging bound


class AgingScheduler(Generic[T]):
    """Per-priority FIFOs; ``take`` serves aged requests first, then by priority."""

    def __init__(self, aging_s: float, capacity: int | None = None) -> None:
        if aging_s <= 0:
            raise ValueError("the aging bound must be positive")
        self.aging_s = aging_s
        self.capacity = capacity
        self._queues: dict[str, deque[Queued[T]]] = {p: deque() for p in PRIORITY_ORDER}

    def __len__(self) -> int:
        return sum(len(q) for q in self._queues.values())

    def __iter__(self) -> Iterator[Queued[T]]:
        for queue in self._queues.values():
            yield from queue

    def size(self, priority: str) -> int:
        return len(self._queues[priority])

    def has_room(self, priority: str) -> bool:
        return self.capacity is None or len(self._queues[priority]) < self.capacity

    def put(self, priority: str, item: T, queued_at: float) -> None:
        if priority not in self._queues:
            raise ValueError(f"unknown priority {priority!r}; expected one of {PRIORITY_ORDER}")
        self._queues[priority].append(Queued(item, priority, queued_at))

    def take(self, max_items: int, now: float) -> list[Queued[T]]:
        """Up to ``max_items``: aged requests (oldest first), then high, normal, low."""
        taken: list[Queued[T]] = []
        while len(taken) < max_items:
            oldest = self._oldest_aged(now)
            if oldest is None:
                break
            head = self._queues[oldest].popleft()
            taken.append(Queued(head.item, head.priority, head.queued_at, aged=True))
        for priority in PRIORITY_ORDER:
            queue = self._queues[priority]
            while queue and len(taken) < max_items:
                taken.append(queue.popleft())
        return taken

    def next_aging_at(self) -> float | None:
        """When the oldest waiting request reaches the bound (None: nothing waits)."""
        heads = [q[0].queued_at for q in self._queues.values() if q]
        return min(heads) + self.aging_s if heads else None

    def drop(self, stale: Callable[[T], bool]) -> list[T]:
        """Remove (and return) every queued item for which ``stale`` is true, keeping order."""
        removed: list[T] = []
        for priority, queue in self._queues.items():
            kept: deque[Queued[T]] = deque()
            for queued in queue:
                (removed.append(queued.item) if stale(queued.item) else kept.append(queued))
            self._queues[priority] = kept
        return removed

    def _oldest_aged(self, now: float) -> str | None:
        best: str | None = None
        best_at = 0.0
        for priority, queue in self._queues.items():
            if (
                queue
                and now - queue[0].queued_at >= self.aging_s
                and (best is None or queue[0].queued_at < best_at)
            ):
                best, best_at = priority, queue[0].queued_at
        return best
