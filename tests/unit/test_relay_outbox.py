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
    async def run() -> list[object]:
        outbox = Outbox(limit=2)
        outbox.offer([b"snapshot", b"ack"])
        outbox.offer(b"live")
        return [await outbox.next(), await outbox.next()]

    assert asyncio.run(run()) == [[b"snapshot", b"ack"], b"live"]


def test_the_writer_wakes_on_new_entries_and_stops_on_lagging_or_close() -> None:
    async def run() -> tuple[object, object, object]:
        outbox = Outbox(limit=1)
        waiting = asyncio.ensure_future(outbox.next())
        await asyncio.sleep(0)
        outbox.offer(b"a")
        first = await asyncio.wait_for(waiting, 1)
        outbox.offer(b"b")
        outbox.offer(b"c")  # over the limit: lagging, the queued b is dropped
        lagging = await asyncio.wait_for(outbox.next(), 1)
        closed = Outbox(limit=1)
        closed.close()
        return first, lagging, await asyncio.wait_for(closed.next(), 1)

    assert asyncio.run(run()) == (b"a", None, None)


def test_drained_returns_once_the_writer_took_everything() -> None:
    async def run() -> list[bytes | list[bytes] | None]:
        outbox = Outbox(10)
        outbox.offer(b"a")
        outbox.offer(b"b")
        taken: list[bytes | list[bytes] | None] = []

        async def writer() -> None:
            while (entry := await outbox.next()) is not None:
                taken.append(entry)

        task = asyncio.create_task(writer())
        await asyncio.wait_for(outbox.drained(), 5)
        outbox.close()
        await task
        return taken

    assert asyncio.run(run()) == [b"a", b"b"]
