"""The router's acks go out in offset order per partition, whoever finishes an event first."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

from app.agents.acks import InOrderAcks


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


def _run(acks: InOrderAcks, *events: Any) -> None:
    async def done() -> None:
        for event in events:
            await acks.done(event)

    asyncio.run(done())


def test_an_event_is_acked_only_after_every_earlier_one_of_its_partition() -> None:
    acks, stream = InOrderAcks(), _Stream()
    events = [_event(offset) for offset in range(5)]
    for event in events:
        acks.track(stream, event)  # type: ignore[arg-type]
    _run(acks, events[1], events[3], events[4])  # a handed-over event 0 is still open
    assert stream.acked == []
    _run(acks, events[0])
    assert stream.acked == [(0, 0), (0, 1)]  # 2 is open: 3 and 4 wait behind it
    _run(acks, events[2])
    assert stream.acked == [(0, 0), (0, 1), (0, 2), (0, 3), (0, 4)]
    assert acks.held() == 0


def test_partitions_do_not_wait_for_each_other() -> None:
    acks, stream = InOrderAcks(), _Stream()
    a0, b0, b1 = _event(0, partition=0), _event(7, partition=1), _event(8, partition=1)
    for event in (a0, b0, b1):
        acks.track(stream, event)  # type: ignore[arg-type]
    _run(acks, b1, b0)
    assert stream.acked == [(1, 7), (1, 8)]
    assert acks.held() == 1


def test_a_rebalance_drops_what_was_open_unacked() -> None:
    acks, stream = InOrderAcks(), _Stream()
    old = [_event(offset, generation=1) for offset in range(3)]
    for event in old:
        acks.track(stream, event)  # type: ignore[arg-type]
    new = _event(1, generation=2)  # the partition came back: its uncommitted events again
    acks.track(stream, new)  # type: ignore[arg-type]
    _run(acks, *old)  # the old generation's work finishing late acks nothing
    assert stream.acked == []
    acks.track(stream, _event(0, generation=1))  # a stale event still in a buffer: not tracked
    _run(acks, new)
    assert stream.acked == [(0, 1)]


def test_an_offset_delivered_twice_is_acked_when_both_deliveries_are_done() -> None:
    acks, stream = InOrderAcks(), _Stream()
    first, again = _event(4), _event(4)
    acks.track(stream, first)  # type: ignore[arg-type]
    acks.track(stream, again)  # type: ignore[arg-type]
    _run(acks, again)
    assert stream.acked == []
    _run(acks, first)
    assert stream.acked == [(0, 4)]


def test_a_seek_back_puts_the_earlier_offset_at_the_head() -> None:
    acks, stream = InOrderAcks(), _Stream()
    later, earlier = _event(9), _event(6)
    acks.track(stream, later)  # type: ignore[arg-type]
    acks.track(stream, earlier)  # type: ignore[arg-type]
    _run(acks, later)
    assert stream.acked == []
    _run(acks, earlier)
    assert stream.acked == [(0, 6), (0, 9)]


def test_an_event_never_tracked_is_not_acked() -> None:
    acks, stream = InOrderAcks(), _Stream()
    acks.track(stream, _event(0))  # type: ignore[arg-type]
    _run(acks, _event(3))
    assert stream.acked == []


def test_requests_are_handed_over_only_while_few_of_their_priority_wait(monkeypatch: Any) -> None:
    """Past ``explain_handover_max`` waiting requests of a priority, the router publishes them
    (``hand_over`` says no): a handed-over request holds its partition's acks until it is final,
    and a backlog would hold them for as long as it lasts."""
    from app.agents import explaining

    monkeypatch.setattr(explaining.settings, "explain_handover_max", 3)
    monkeypatch.setattr(explaining.settings, "explain_fast_path", True)
    monkeypatch.setattr(explaining, "work_queue", explaining.WorkQueue(30.0, 100, 0.25))

    async def offers() -> list[bool]:
        stream = _Stream()
        low = [explaining.hand_over(stream, _event(n), "low", b"{}") for n in range(5)]  # type: ignore[arg-type]
        return [*low, explaining.hand_over(stream, _event(9), "high", b"{}")]  # type: ignore[arg-type]

    assert asyncio.run(offers()) == [True, True, True, False, False, True]
