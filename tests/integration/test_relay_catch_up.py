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
    RELAY_TOKEN_SECRET,
    RelayProcess,
    Stack,
    free_port,
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
    relay = stack_relay_unwaited(stack)
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


def test_a_reading_client_rides_out_the_catch_up(stack: Stack) -> None:
    """Connected before the relay has read its history, a client that reads is not dropped,
    however fast the history arrives: the relay hands over one batch per turn of its loop."""
    relay = stack_relay_unwaited(stack, FRAUDLENS_RELAY_CLIENT_QUEUE_MAX="1000")
    wait_until(lambda: _answers(relay), 60, "the relay to serve")

    async def run() -> dict[str, Any]:
        async with connect(f"{relay.ws}?token={relay.token()}", max_size=None) as ws:
            hello = orjson.loads(await asyncio.wait_for(ws.recv(), 30))
            assert hello["type"] == "hello", hello
            await ws.send(orjson.dumps({"type": "subscribe", "subscription": "all", "id": "s"}).decode())
            verdicts = 0
            while verdicts < HISTORY:  # raises ConnectionClosed if dropped as lagging
                verdicts += b'"type":"verdict"' in await asyncio.wait_for(ws.recv(decode=False), 30)
            return await asyncio.to_thread(relay.stats)

    stats = asyncio.run(run())
    assert stats["dropped_lagging"] == 0, stats
    assert stats["records"] >= HISTORY, stats


def stack_relay_unwaited(stack: Stack, **env: str) -> RelayProcess:
    """A relay whose start is not waited for: the test watches it catch up."""
    port = free_port()
    process = stack.spawn(
        "relay", ["relay"], FRAUDLENS_RELAY_PORT=str(port), FRAUDLENS_TOKEN_SECRET=RELAY_TOKEN_SECRET, **env
    )
    return RelayProcess(process, port)


def _answers(relay: RelayProcess) -> bool:
    assert relay.process.alive(), relay.process.tail()
    try:
        return relay.get("/healthz")[0] == 200
    except OSError:
        return False
