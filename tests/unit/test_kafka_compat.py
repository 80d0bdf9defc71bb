"""Faust's commit-livelock detector must not crash a worker while aiokafka resets an offset."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from aiokafka.consumer.subscription_state import SubscriptionState
from aiokafka.structs import TopicPartition
from faust.types import TP

from app.kafka_compat import install_faust_patches
from app.settings import Settings


def _thread(subscription: SubscriptionState, checked: list[Any]) -> Any:
    def verify_aiokafka(now: float, tp: Any) -> bool:
        checked.append(tp)
        return True  # "already logged": the original returns right after this call

    consumer = SimpleNamespace(_fetcher=SimpleNamespace(_subscriptions=subscription))
    return SimpleNamespace(
        _consumer=consumer, _ensure_consumer=lambda: consumer, _verify_aiokafka_event_path=verify_aiokafka
    )


@pytest.fixture
def subscription() -> Iterator[SubscriptionState]:
    async def assigned() -> SubscriptionState:  # aiokafka builds these on a running loop
        state = SubscriptionState()
        state.assign_from_user({TopicPartition("explain.normal", 4)})
        return state

    loop = asyncio.new_event_loop()
    yield loop.run_until_complete(assigned())
    loop.close()


def test_a_partition_being_reset_is_skipped_then_checked_again(subscription: SubscriptionState) -> None:
    install_faust_patches(Settings())
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    tp, checked = TP("explain.normal", 4), []
    thread = _thread(subscription, checked)
    partition = subscription.subscription.assignment.state_value(TopicPartition("explain.normal", 4))
    partition.await_reset(-2)  # what the fetcher does on OffsetOutOfRange: the position is unset
    with pytest.raises(AssertionError):
        _ = partition.position  # what Faust's detector read, and crashed the worker on
    assert AIOKafkaConsumerThread.verify_event_path(thread, 0.0, tp) is None
    assert checked == []

    partition.reset_to(206)
    AIOKafkaConsumerThread.verify_event_path(thread, 0.0, tp)
    assert checked == [tp]


def test_no_consumer_yet_is_skipped(subscription: SubscriptionState) -> None:
    install_faust_patches(Settings())
    from faust.transport.drivers.aiokafka import AIOKafkaConsumerThread

    thread = _thread(subscription, [])
    thread._consumer = None
    assert AIOKafkaConsumerThread.verify_event_path(thread, 0.0, TP("explain.normal", 4)) is None
