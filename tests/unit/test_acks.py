"""The router's acks go out in offset order per partition, whoever finishes an event first."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from app.explainer.acks import InOrderAcks


@dataclass(frozen=True)
class _TP:
    topic: str
    partition: int


@dataclass
class _Message:
    tp: _TP
    offset: int
    generation_id: int | None


@dataclass
class _Event:
    message: _Message


@dataclass
class _Stream:
    acked: list[tuple[int, int]] = field(default_factory=list)  # (partition, offset), in ack order

    async def ack(self, event: Any) -> bool:
        self.acked.append((event.message.tp.partition, event.message.offset))
        return True


def _event(offset: int, partition: int = 0, generation: int | None = 1) -> Any:
    return _Event(_Message(_TP("verdicts", partition), offset, generation))


class _Acks:
    """An ``InOrderAcks`` on a stream that records its acks, at a generation the test sets."""

    def __init__(self) -> None:
        self.generation = 1
        self.stream = _Stream()
        self.acks = InOrderAcks(lambda: self.generation)

    @property
    def acked(self) -> list[tuple[int, int]]:
        return self.stream.acked

    def track(self, *events: Any) -> list[Any]:
        for event in events:
            self.acks.track(self.stream, event)  # type: ignore[arg-type]
        return list(events)

    def done(self, *events: Any) -> None:
        async def done() -> None:
            for event in events:
                await self.acks.done(event)

        asyncio.run(done())


def test_an_event_is_acked_only_after_every_earlier_one_of_its_partition() -> None:
    acks = _Acks()
    events = acks.track(*(_event(offset) for offset in range(5)))
    acks.done(events[1], events[3], events[4])  # a handed-over event 0 is still open
    assert acks.acked == []
    acks.done(events[0])
    assert acks.acked == [(0, 0), (0, 1)]  # 2 is open: 3 and 4 wait behind it
    acks.done(events[2])
    assert acks.acked == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4)]
    assert acks.acks.held() == 0


def test_partitions_do_not_wait_for_each_other() -> None:
    acks = _Acks()
    _a0, b0, b1 = acks.track(_event(0, partition=0), _event(7, partition=1), _event(8, partition=1))
    acks.done(b1, b0)
    assert acks.acked == [(1, 7), (1, 8)]
    assert acks.acks.held() == 1


def test_a_rebalance_drops_what_was_open_unacked() -> None:
    acks = _Acks()
    old = acks.track(*(_event(offset, generation=1) for offset in range(3)))
    acks.generation = 2  # the partition came back: its uncommitted events again
    new = acks.track(_event(1, generation=2))[0]
    acks.done(*old)  # the old generation's work finishing late acks nothing
    assert acks.acked == []
    acks.track(_event(0, generation=1))  # a stale event still in a buffer: not tracked
    acks.done(new)
    assert acks.acked == [(0, 1)]


def test_an_offset_delivered_twice_is_acked_when_both_deliveries_are_done() -> None:
    acks = _Acks()
    first, again = acks.track(_event(4), _event(4))
    acks.done(again)
    assert acks.acked == []
    acks.done(first)
    assert acks.acked == [(0, 4)]


def test_a_seek_back_puts_the_earlier_offset_at_the_head() -> None:
    acks = _Acks()
    later, earlier = acks.track(_event(9), _event(6))
    acks.done(later)
    assert acks.acked == []
    acks.done(earlier)
    assert acks.acked == [(0, 6), (0, 9)]


def test_an_event_never_tracked_is_not_acked() -> None:
    acks = _Acks()
    acks.track(_event(0))
    acks.done(_event(3))
    assert acks.acked == []


def test_requests_are_handed_over_only_while_few_of_their_priority_wait() -> None:
    """Past ``explain_handover_max`` waiting requests of a priority, the router publishes them
    (``hand_over`` says no): a handed-over request holds its partition's acks until it is final,
    and a backlog would hold them for as long as it lasts."""
    from app.explainer.workers import HandOver, WorkQueue

    hand_over = HandOver(WorkQueue(30.0, 100, 0.25), enabled=True, below=3)
    off = HandOver(WorkQueue(30.0, 100, 0.25), enabled=False, below=3)

    async def offers() -> list[bool]:
        stream = _Stream()
        low = [hand_over(stream, _event(n), "low", b"{}") for n in range(5)]  # type: ignore[arg-type]
        return [*low, hand_over(stream, _event(9), "high", b"{}"), off(stream, _event(10), "high", b"{}")]  # type: ignore[arg-type]

    assert asyncio.run(offers()) == [True, True, True, False, False, True, False]


def test_an_event_with_two_requests_handed_over_is_acked_when_both_are_final() -> None:
    """A flagged verdict hands both its kinds' requests to the workers (no request record): it is
    acked, and its partition's commit passes it, only once both explanations are final, so a
    SIGKILL after one of them replays the verdict for the other. Without ``also``: acked after
    the first, the counterfactual lost to a SIGKILL."""
    acks = _Acks()
    verdict, later = acks.track(_event(3), _event(4))
    acks.acks.also(verdict)  # its second request handed over
    acks.done(later, verdict)  # the contributions final
    assert acks.acked == []
    acks.done(verdict)  # the counterfactual final
    assert acks.acked == [(0, 3), (0, 4)]


def test_also_for_an_event_of_an_earlier_generation_owes_nothing() -> None:
    """A batch routed before a rebalance handing its second request over after it: the offset,
    read again by this generation, owes one ``done`` only. Without the generation check: never acked."""
    acks = _Acks()
    acks.generation = 2
    current = acks.track(_event(0, generation=2))[0]
    acks.acks.also(_event(0, generation=1))
    acks.done(current)
    assert acks.acked == [(0, 0)]
