"""Small, named adjustments to faust-streaming's Kafka driver.

faust-streaming 0.15.3 hard-codes ``fetch_max_wait_ms=1500`` for its worker consumer; we make it a
setting. Its producer buffer (the ordered queue behind ``send_soon`` and table writes) throttles
the stream at 100 pending messages, logging a warning each time; one scored batch queues a
verdict, a prediction row and a card state per transaction, so the bound follows the batch size.

Records skipped around a rebalance are handed on by ``app.offset_guard`` (installed here).
Everything else is configured through Faust's own settings.
"""

from __future__ import annotations

from typing import Any

from app.settings import Settings

_installed: list[Settings] = []


def install_faust_patches(settings: Settings) -> None:
    """Idempotent: wraps the consumer factory once, reading the latest settings."""
    if _installed:
        _installed[0] = settings
        return
    _installed.append(settings)
    from faust.transport.consumer import Consumer
    from faust.transport.drivers import aiokafka as driver
    from faust.transport.producer import ProducerBuffer

    from app import offset_guard

    offset_guard.install(Consumer)

    ProducerBuffer.max_messages = 4 * settings.scorer_batch_max + 1000

    original = driver.AIOKafkaConsumerThread._create_worker_consumer

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = _installed[0].fetch_max_wait_ms
        return consumer

    driver.AIOKafkaConsumerThread._create_worker_consumer = create_worker_consumer  # type: ignore[method-assign]
