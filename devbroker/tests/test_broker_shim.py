"""The broker shim keeps a client's connection after garbage: a frame it cannot decode, or an
answer it cannot decode, is passed on untouched, and the next valid request on the same connection
is answered. A parser raising anything but ``WireError`` ends the connection task, which is what
these tests catch (the parser-level fuzz is in test_broker_wire.py).

A fake upstream stands in for noida-db: it answers every request with the request's own bytes as
the response body, so the garbage reaches the response parsers too.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
import threading
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fraudlens_devbroker import wire
from fraudlens_devbroker.embedded import free_port
from fraudlens_devbroker.shim import BrokerShim, read_frame

PROBE_CORRELATION = 424242


async def _echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answer each frame with its correlation id (if it has one) and its own bytes after it."""
    with contextlib.suppress(asyncio.IncompleteReadError, ConnectionError, ValueError):
        while True:
            frame = await read_frame(reader)
            correlation, body = frame[8:12].ljust(4, b"\0"), frame[12:]
            writer.write(struct.pack(">i", 4 + len(body)) + correlation + body)
            await writer.drain()
    writer.close()


@pytest.fixture(scope="module")
def shim_port() -> Iterator[int]:
    """A BrokerShim in front of the echo upstream, on its own event loop in a thread."""
    loop = asyncio.new_event_loop()
    upstream, listen = free_port(), free_port()
    shim = BrokerShim(("127.0.0.1", upstream), ("127.0.0.1", listen))

    async def start() -> asyncio.Server:
        server = await asyncio.start_server(_echo, "127.0.0.1", upstream)
        await shim.start()
        return server

    server = loop.run_until_complete(start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield listen
    finally:
        asyncio.run_coroutine_threadsafe(shim.close(), loop).result(10)
        loop.call_soon_threadsafe(server.close)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def sized(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def probe() -> bytes:
    """A valid ApiVersions v0 request."""
    return sized(struct.pack(">hhi", wire.API_API_VERSIONS, 0, PROBE_CORRELATION) + b"\x00\x05probe")


def _recv_exactly(sock: socket.socket, count: int) -> bytes:
    data = b""
    while len(data) < count:
        chunk = sock.recv(count - len(data))
        if not chunk:
            raise AssertionError("the shim closed the connection")
        data += chunk
    return data


def probe_answered_after(port: int, frames: list[bytes]) -> bool:
    """Send ``frames`` then the probe on one connection; True once the probe's answer arrives."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(b"".join(frames) + probe())
        while True:  # one answer per frame (some garbage gets none, e.g. a produce with acks=0)
            (size,) = struct.unpack(">i", _recv_exactly(sock, 4))
            body = _recv_exactly(sock, size)
            if struct.unpack(">i", body[:4])[0] == PROBE_CORRELATION:
                return True


_PARSED = sorted(wire.VERSION_CAPS.keys() - {wire.API_FETCH} | {wire.API_API_VERSIONS})
_BYTES = st.sampled_from([0x00, 0x00, 0x00, 0x01, 0x02, 0x7F, 0x80, 0xFF]) | st.integers(0, 255)
_BODIES = st.lists(_BYTES, max_size=64).map(bytes) | st.binary(max_size=64)


@st.composite
def garbage_frames(draw: st.DrawFn) -> bytes:
    """A frame the shim inspects: the header of an API it parses, then random bytes; or random
    bytes throughout. Fetches ask for a 10 ms wait so a parsed one is not held for long."""
    kind = draw(st.sampled_from(["parsed api", "fetch", "random"]))
    body = draw(_BODIES)
    if kind == "random":
        return sized(body)
    version, correlation = draw(st.integers(-1, 12)), draw(st.integers(0, 1000))
    if kind == "fetch":
        head = (
            struct.pack(">hhi", wire.API_FETCH, version, correlation)
            + b"\x00\x01c"  # client id "c", then replica -1 and max_wait_ms 10
            + struct.pack(">ii", -1, 10)
        )
    else:
        head = struct.pack(">hhi", draw(st.sampled_from(_PARSED)), version, correlation)
    return sized(head + body)


@settings(max_examples=300, derandomize=True, database=None, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])  # fmt: skip
@given(frames=st.lists(garbage_frames(), min_size=1, max_size=3))
def test_a_valid_request_after_garbage_is_answered_on_the_same_connection(
    shim_port: int, frames: list[bytes]
) -> None:
    assert probe_answered_after(shim_port, frames)


def test_a_negative_frame_size_ends_only_that_connection(shim_port: int) -> None:
    with socket.create_connection(("127.0.0.1", shim_port), timeout=10) as sock:
        sock.sendall(struct.pack(">i", -5) + b"junk")
        assert sock.recv(10) == b"", "a frame of negative size is not a Kafka frame: the shim hangs up"
    assert probe_answered_after(shim_port, [])
