"""A relay started over a long history: ``/healthz`` says ready only once it has read what was
on its topics when it started, and a client that reads keeps up with the catch-up instead of
being dropped as lagging by the relay's own burst. Broker and relays only: the verdicts (the
schema's example, each with its own id) are written straight to ``verdicts``."""

from __future__ import annotations

import asyncio
import copy
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from confluent_kafka import Consumer, TopicPartition
from websockets.asyncio.client import connect

from app.kafka import topics
from tests.integration.harness import (
    Stack,
    start_relay,
    wait_until,
)

HISTORY = 40_000  # verdicts on the topic before the relays under test start
EXAMPLE = json.loads(
    (Path(__file__).resolve().parents[2] / "schemas/examples/verdict.valid.json").read_text()
)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, models_dir: Path) -> Iterator[Stack]:
    stack = Stack(root=tmp_path_factory.mktemp("catch-up-stack"), models_dir=models_dir)
    stack.start_broker()
    try:
        start_relay(stack, "relay-topics").process.stop()  # it creates the topics
        stack.produce((_verdict(i) for i in range(HISTORY)), topic=topics.VERDICTS)
        yield stack
    finally:
        stack.stop_all()


def _verdict(i: int) -> tuple[bytes, bytes]:
    verdict = copy.deepcopy(EXAMPLE)
    verdict["transaction_id"] = f"history-{i}"
    return verdict["transaction_id"].encode(), orjson.dumps(verdict)


def _on_the_topic(stack: Stack) -> int:
    """Records retained on ``verdicts``, from the broker's watermarks (not from the relay)."""
    consumer = Consumer({"bootstrap.servers": stack.bootstrap, "group.id": "catch-up-probe"})
    try:
        partitions = consumer.list_topics(topics.VERDICTS, timeout=10).topics[topics.VERDICTS].partitions
        total = 0
        for p in partitions:
            low, high = consumer.get_watermark_offsets(TopicPartition(topics.VERDICTS, p), timeout=10)
            total += high - low
        return total
    finally:
        consumer.close()


def test_ready_only_once_the_history_is_read(stack: Stack) -> None:
    on_topic = _on_the_topic(stack)
    assert on_topic >= HISTORY, on_topic
    relay = start_relay(stack, "relay-catching-up", wait=False)
    seen: list[dict[str, Any]] = []

    def first_ready() -> dict[str, Any] | None:
        assert relay.process.alive(), relay.process.tail()
        try:
            stats = relay.stats()
        except (OSError, AssertionError):  # not serving yet
            return None
        seen.append(stats)
        return stats if stats["ready"] else None

    stats = wait_until(first_ready, 120, "the relay to say ready", interval=0.01)
    # ready and records come from one snapshot of the relay's own counters
    assert stats["records"] >= on_topic, (stats["records"], on_topic, len(seen))
    assert stats["bad_records"] == 0, stats


def test_a_reading_client_rides_out_a_burst_the_relay_reads_at_once(stack: Stack) -> None:
    """A client that reads is not dropped by the relay's own burst: 40,000 verdicts written at
    once after it subscribed reach the relay's reader much faster than its loop fans them out
    (up to 8 batches of 500 waiting), and the relay hands over one batch per turn of its loop,
    so the client's queue (1,000 here) never holds more than a batch and a bit. The client
    subscribes first (to a relay that has read its history), so when it connects cannot matter;
    every wait is bounded."""
    relay = start_relay(stack, "relay-burst", FRAUDLENS_RELAY_CLIENT_QUEUE_MAX="1000")
    burst = [_verdict(HISTORY + i) for i in range(HISTORY)]
    wanted = {key for key, _ in burst}

    async def run() -> tuple[int, dict[str, Any]]:
        async with connect(f"{relay.ws}?token={relay.token()}", max_size=None) as ws:
            hello = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
            assert hello["type"] == "hello", hello
            await ws.send(orjson.dumps({"type": "subscribe", "subscription": "all", "id": "s"}).decode())
            while orjson.loads(await asyncio.wait_for(ws.recv(), 30)).get("type") != "ack":
                pass
            produced = asyncio.create_task(asyncio.to_thread(stack.produce, burst, topics.VERDICTS))
            seen: set[bytes] = set()
            while not wanted <= seen:  # ConnectionClosed if dropped as lagging; 30 s of silence: a timeout
                frame = orjson.loads(await asyncio.wait_for(ws.recv(decode=False), 30))
                if frame["type"] == "verdict":
                    seen.add(frame["transaction_id"].encode())
            await produced
            return len(seen & wanted), await asyncio.to_thread(relay.stats)

    received, stats = asyncio.run(asyncio.wait_for(run(), 300))
    assert received == HISTORY
    assert stats["dropped_lagging"] == 0, stats
