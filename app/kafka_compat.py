"""Small, named adjustments to faust-streaming's Kafka driver.

faust-streaming 0.15.3 hard-codes ``fetch_max_wait_ms=1500`` for its worker consumer; we make it a
setting. Everything else is configured through Faust's own settings.
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
    from faust.transport.drivers import aiokafka as driver

    original = driver.AIOKafkaConsumerThread._create_worker_consumer

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = _installed[0].fetch_max_wait_ms
        return consumer

    driver.AIOKafkaConsumerThread._create_worker_consumer = create_worker_consumer  # type: ignore[method-assign]
