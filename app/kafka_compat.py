"""Small, named adjustments to faust-streaming's Kafka driver.

faust-streaming 0.15.3 hard-codes ``fetch_max_wait_ms=1500`` for its worker consumer; we make it a
setting.

Records skipped around a rebalance are handed on by ``app.offset_guard`` (installed here).

Faust's commit-livelock detector reads each assigned partition's fetch position every few
seconds; aiokafka asserts when the position is unset, which it is while a partition's offset is
being reset (after OffsetOutOfRange: the embedded broker trimmed records a seek asked for) or
has not been fetched yet. Found by ``make chaos``: the AssertionError stopped an explainer.
The check is skipped for such a partition until it has a position again.

Faust declares every topic and changelog while its worker starts; one request to a broker that
is away (restarting) raises aiokafka's NodeNotReadyError and the whole worker exits (issue 23,
the family of robinhood/faust#47, #113, #596). The declaration is retried with backoff while the
broker does not answer (one log line each way), up to ``app.outage.RIDE_THROUGH_S``.
Everything else is configured through Faust's own settings.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from app.kafka.outage import RIDE_THROUGH_S, BrokerUnreachable, Outage, backoff
from app.settings import ExplainerSettings

log = logging.getLogger(__name__)

_installed: list[ExplainerSettings] = []


def install_faust_patches(settings: ExplainerSettings) -> None:
    """Idempotent: wraps the consumer factory once, reading the latest settings."""
    if _installed:
        _installed[0] = settings
        return
    _installed.append(settings)
    from faust.transport.consumer import Consumer
    from faust.transport.drivers import aiokafka as driver

    from app import offset_guard

    offset_guard.install(Consumer)

    original = driver.AIOKafkaConsumerThread._create_worker_consumer

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = _installed[0].fetch_max_wait_ms
        return consumer

    driver.AIOKafkaConsumerThread._create_worker_consumer = create_worker_consumer  # type: ignore[method-assign]

    original_verify = driver.AIOKafkaConsumerThread.verify_event_path

    def verify_event_path(self: Any, now: float, tp: Any) -> None:
        if not has_position(self, tp):
            return None
        return original_verify(self, now, tp)

    driver.AIOKafkaConsumerThread.verify_event_path = verify_event_path  # type: ignore[method-assign]
    _retry_topic_declarations(driver.Transport)


def _retry_topic_declarations(transport: Any) -> None:
    original = transport._create_topic
    outage = Outage("explainer: declaring topics", log)

    async def create_topic(self: Any, *args: Any, **kwargs: Any) -> None:
        attempt = 0
        while True:
            try:
                await original(self, *args, **kwargs)
            except Exception as exc:
                if not broker_unreachable(exc):
                    raise
                outage.down(repr(exc))
                if outage.seconds() >= RIDE_THROUGH_S:
                    raise BrokerUnreachable(f"no answer from the broker for {RIDE_THROUGH_S:.0f} s") from exc
                await asyncio.sleep(backoff(attempt))
                attempt += 1
                continue
            outage.up()
            return

    transport._create_topic = create_topic


def broker_unreachable(exc: BaseException) -> bool:
    """Whether an aiokafka error means the broker is away (worth waiting for), not a refusal."""
    from aiokafka import errors
    from faust.exceptions import NotReady

    away = (errors.NodeNotReadyError, errors.KafkaConnectionError, errors.RequestTimedOutError,
            errors.KafkaTimeoutError, asyncio.TimeoutError, NotReady)  # fmt: skip
    return isinstance(exc, away)


def has_position(thread: Any, tp: Any) -> bool:
    """Whether aiokafka knows a fetch position for ``tp`` (False while it resets the offset)."""
    from aiokafka.structs import TopicPartition

    consumer = thread._consumer
    if consumer is None:
        return False
    assignment = consumer._fetcher._subscriptions.subscription
    if assignment is None or assignment.assignment is None:
        return False
    state = assignment.assignment.state_value(TopicPartition(tp.topic, tp.partition))
    return state is not None and bool(state.has_valid_position)
