"""The per-client queue policy: bounded, then lagging (refuses everything), never blocking."""

from __future__ import annotations

import asyncio

from app.relay.outbox import Outbox


def test_offers_up_to_the_limit_then_lagging() -> None:
    outbox = Outbox(limit=3)
    assert all(outbox.offer(b"x") for _ in range(3))
    assert not outbox.offer(b"one too many")
    assert outbox.lagging and len(outbox) == 3
    assert not outbox.offer(b"later")  # stays refused even after room would appear


def test_a_batch_counts_as_one_entry_and_order_is_kept() -> None:
    async def run() -> object:
        outbox = Outbox(limit=2)
        outbox.offer([b"snapshot", b"ack"])
        outbox.offer(b"live")
        return await outbox.take()

    assert asyncio.run(run()) == [[b"snapshot", b"ack"], b"live"]


def test_offer_many_counts_every_frame_and_refuses_what_does_not_fit() -> None:
    outbox = Outbox(limit=4)
    assert outbox.offer_many([b"a", b"b", b"c"])
    assert len(outbox) == 3
    assert not outbox.offer_many([b"d", b"e"])  # 5 > 4: lagging, nothing of it queued
    assert outbox.lagging and len(outbox) == 3
    assert not outbox.offer(b"f")


def test_take_returns_everything_queued_since_the_last_take() -> None:
    async def run() -> list[object]:
        outbox = Outbox(limit=10)
        outbox.offer_many([b"1", b"2"])
        first = await outbox.take()
        outbox.offer(b"3")
        outbox.offer_many([b"4"])
        return [first, await outbox.take(), len(outbox)]

    assert asyncio.run(run()) == [[b"1", b"2"], [b"3", b"4"], 0]


def test_the_writer_wakes_on_new_entries_and_stops_on_lagging_or_close() -> None:
    async def run() -> tuple[object, object, object]:
        outbox = Outbox(limit=1)
        waiting = asyncio.ensure_future(outbox.take())
        await asyncio.sleep(0)
        outbox.offer(b"a")
        first = await asyncio.wait_for(waiting, 1)
        outbox.offer(b"b")
        outbox.offer(b"c")  # over the limit: lagging, the queued b is dropped
        lagging = await asyncio.wait_for(outbox.take(), 1)
        closed = Outbox(limit=1)
        closed.close()
        return first, lagging, await asyncio.wait_for(closed.take(), 1)

    assert asyncio.run(run()) == ([b"a"], None, None)


def test_drained_returns_once_the_writer_took_everything() -> None:
    async def run() -> list[bytes | list[bytes]]:
        outbox = Outbox(10)
        outbox.offer(b"a")
        outbox.offer(b"b")
        taken: list[bytes | list[bytes]] = []

        async def writer() -> None:
            while (entries := await outbox.take()) is not None:
                taken.extend(entries)

        task = asyncio.create_task(writer())
        await asyncio.wait_for(outbox.drained(), 5)
        outbox.close()
        await task
        return taken

    assert asyncio.run(run()) == [b"a", b"b"]
