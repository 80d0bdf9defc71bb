"""The shim coalesces the wake-ups of a background client's parked fetch (issue 18, lever 1).

A parked fetch woken by a produce waits ``fetch_coalesce_ms`` before it is re-issued, so it
carries the records of the produces that land meanwhile, but only for a client whose id says it
tolerates the wait (the explainer's Faust consumer), never past the fetch's own ``max_wait_ms``;
the verdict path's librdkafka clients are answered at once.

A fake noida-db stands in upstream: it keeps every produced record, answers each fetch with all
of them (an empty response while there are none) and never long-polls, as noida-db does not.
"""

from __future__ import annotations

import asyncio
import struct
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest

from fraudlens_devbroker import wire
from fraudlens_devbroker.embedded import free_port
from fraudlens_devbroker.shim import BrokerShim, read_frame

TOPIC = "verdicts"
FAUST_CLIENT = "faust-0.15.3"
WINDOW_MS = 1000.0  # far above any scheduling delay, so a test tells waited from answered


def _string(value: str | None) -> bytes:
    return wire.encode_string(value)


def _sized(payload: bytes) -> bytes:
    return struct.pack(">i", len(payload)) + payload


def fetch_request(client_id: str | None, max_wait_ms: int, correlation_id: int = 1) -> bytes:
    """Fetch v4 of partition 0 of TOPIC from offset 0, min_bytes 1 (what every client sends)."""
    partition = struct.pack(">iqi", 0, 0, 1_048_576)
    body = struct.pack(">iiiib", -1, max_wait_ms, 1, 4_194_304, 0)
    body += struct.pack(">i", 1) + _string(TOPIC) + struct.pack(">i", 1) + partition
    return _sized(struct.pack(">hhi", wire.API_FETCH, 4, correlation_id) + _string(client_id) + body)


def produce_request(record: bytes, correlation_id: int = 1) -> bytes:
    """Produce v3, acks=1, ``record`` standing for the record batch of partition 0 of TOPIC."""
    body = _string(None) + struct.pack(">hi", 1, 5000)
    body += struct.pack(">i", 1) + _string(TOPIC) + struct.pack(">ii", 1, 0)
    body += struct.pack(">i", len(record)) + record
    return _sized(struct.pack(">hhi", wire.API_PRODUCE, 3, correlation_id) + _string("producer") + body)


@dataclass
class FakeNoida:
    """Produce appends; Fetch v4 answers at once with everything produced so far."""

    records: list[bytes] = field(default_factory=list)
    fetches: int = 0

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                frame = await read_frame(reader)
                header = wire.parse_request_header(frame, 4)
                correlation = struct.pack(">i", header.correlation_id)
                if header.api_key == wire.API_PRODUCE:
                    self.records.append(_produced_record(frame[header.body_offset :]))
                    writer.write(_sized(correlation))  # the shim does not read produce answers
                else:
                    self.fetches += 1
                    writer.write(_sized(correlation + self._fetch_response()))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()

    def _fetch_response(self) -> bytes:
        records = b"".join(self.records)
        partition = struct.pack(">ihqqi", 0, 0, len(self.records), len(self.records), 0)
        partition += struct.pack(">i", len(records)) + records
        return struct.pack(">ii", 0, 1) + _string(TOPIC) + struct.pack(">i", 1) + partition


def _produced_record(body: bytes) -> bytes:
    """The records of the one partition of a ``produce_request``."""
    reader = wire.Reader(body)
    reader.string()  # transactional id
    reader.i16(), reader.i32()  # acks, timeout
    reader.count(), reader.string(), reader.count(), reader.i32()  # one topic, one partition
    size = reader.i32()
    return body[reader.pos : reader.pos + size]


@dataclass
class Client:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter

    async def send(self, frame: bytes) -> None:
        self.writer.write(frame)
        await self.writer.drain()

    async def answer(self) -> bytes:
        return await asyncio.wait_for(read_frame(self.reader), 10)


Connect = Callable[[], Awaitable[Client]]


@asynccontextmanager
async def shim_over_fake(window_ms: float) -> AsyncIterator[tuple[FakeNoida, Connect]]:
    noida = FakeNoida()
    upstream, listen = free_port(), free_port()
    server = await asyncio.start_server(noida.serve, "127.0.0.1", upstream)
    shim = BrokerShim(("127.0.0.1", upstream), ("127.0.0.1", listen), fetch_coalesce_ms=window_ms)
    await shim.start()
    clients: list[Client] = []

    async def connect() -> Client:
        clients.append(Client(*await asyncio.open_connection("127.0.0.1", listen)))
        return clients[-1]

    try:
        yield noida, connect
    finally:
        for client in clients:
            client.writer.close()
        await shim.close()
        server.close()


async def _parked(noida: FakeNoida) -> None:
    """Until noida-db answered the fetch empty: a produce from then on wakes it (the shim compares
    its produce count with the one at forwarding time, so it need not be parked yet)."""
    while noida.fetches == 0:
        await asyncio.sleep(0.005)


@dataclass
class Woken:
    since_fetch_s: float  # from sending the fetch to its answer
    since_produce_s: float  # from the first produce's start to the fetch's answer
    answer: bytes


async def _woken_fetch(
    window_ms: float, client_id: str | None, records: int, max_wait_ms: int = 10_000
) -> Woken:
    """Park a fetch of ``client_id``, then produce ``records`` records 0.1 s apart."""
    async with shim_over_fake(window_ms) as (noida, connect):
        consumer, producer = await connect(), await connect()
        sent = time.monotonic()
        await consumer.send(fetch_request(client_id, max_wait_ms))
        await _parked(noida)
        woken = time.monotonic()
        for index in range(records):
            await producer.send(produce_request(b"<record-%d>" % index))
            await producer.answer()  # the shim wakes fetches once noida-db has answered it
            await asyncio.sleep(0.1)
        answer = await consumer.answer()
        done = time.monotonic()
        return Woken(done - sent, done - woken, answer)


def test_a_background_fetch_woken_by_a_produce_waits_the_window_and_carries_several_produces() -> None:
    woken = asyncio.run(_woken_fetch(WINDOW_MS, FAUST_CLIENT, records=3))

    assert all(b"<record-%d>" % i in woken.answer for i in range(3)), "one fetch brings all three"
    assert WINDOW_MS / 1000 <= woken.since_produce_s < 5, "answered after the window, long before max_wait"


@pytest.mark.parametrize("client_id", ["fraudlens-scorer", "rdkafka", None])
def test_a_verdict_path_fetch_woken_by_a_produce_is_answered_at_once(client_id: str | None) -> None:
    woken = asyncio.run(_woken_fetch(WINDOW_MS, client_id, records=1))

    assert b"<record-0>" in woken.answer
    assert woken.since_produce_s < WINDOW_MS / 1000 / 2, "the scorer, the relay and recovery never wait"


def test_a_woken_background_fetch_is_answered_by_its_own_max_wait_however_long_the_window() -> None:
    woken = asyncio.run(_woken_fetch(WINDOW_MS, FAUST_CLIENT, records=1, max_wait_ms=300))

    assert b"<record-0>" in woken.answer, "re-issued at the deadline: the record comes with the answer"
    assert woken.since_fetch_s < 0.3 + 0.3 < WINDOW_MS / 1000


def test_with_the_window_off_a_background_fetch_is_answered_at_once() -> None:
    woken = asyncio.run(_woken_fetch(0, FAUST_CLIENT, records=1))

    assert b"<record-0>" in woken.answer
    assert woken.since_produce_s < WINDOW_MS / 1000 / 2
