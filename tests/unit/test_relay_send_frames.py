"""``send_frames``: several queued events reach the client as separate messages, in order, through
one socket write (a real websockets server and client on loopback)."""

from __future__ import annotations

import asyncio
from typing import Any

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from app.relay.client import send_frames

FRAMES = [b'{"n":1}', b'{"n":2,"text":"\xc3\xa9"}', b'{"n":3}']


async def _exchange(frames: list[bytes]) -> tuple[list[Any], list[int]]:
    writes: list[int] = []

    async def handler(ws: ServerConnection) -> None:
        transport = ws.transport
        original = transport.write

        def counting_write(data: Any) -> None:
            writes.append(len(data))
            original(data)

        transport.write = counting_write  # type: ignore[method-assign]
        await send_frames(ws, frames)
        transport.write = original  # type: ignore[method-assign]
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0, compression=None) as server:  # as the relay
        port = server.sockets[0].getsockname()[1]
        async with connect(f"ws://127.0.0.1:{port}", compression=None) as client:
            received = [await asyncio.wait_for(client.recv(), 5) for _ in frames]
    return received, writes


def test_frames_arrive_as_separate_text_messages_in_order_through_one_write() -> None:
    received, writes = asyncio.run(_exchange(FRAMES))
    assert received == [f.decode() for f in FRAMES]
    assert len(writes) == 1  # one system call's worth for the three frames
    assert writes[0] == sum(len(f) + 2 for f in FRAMES)  # 2-byte header each (short, unmasked)


def test_a_single_frame_goes_through_plain_send() -> None:
    received, writes = asyncio.run(_exchange(FRAMES[:1]))
    assert received == [FRAMES[0].decode()]
    assert writes == [len(FRAMES[0]) + 2]
