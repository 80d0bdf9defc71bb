"""Small, named adjustments to faust-streaming's Kafka driver.

faust-streaming 0.15.3 hard-codes ``fetch_max_wait_ms=1500`` for its worker consumer; we make it a
setting. Its producer buffer (the ordered queue behind ``send_soon`` and table writes) throttles
the stream at 100 pending messages, logging a warning each time; one scored batch queues a
verdict, a prediction row and a card state per transaction, so the bound follows the batch size.

After a rebalance, faust's ``Recovery._resume_streams`` resumes the stream partitions and only
then seeks them to their committed offsets. Records aiokafka fetched from the old positions in
between reach the agents, move the consumer's read offset past the committed one, and the
records re-fetched after the seek are then dropped as already read: measured here, a takeover
under load lost a run of 12 transactions per partition, and the commit moved past them (the
race of faust-streaming issues #216 and #221). We seek first, then resume.

Everything else is configured through Faust's own settings.
"""

from __future__ import annotations

import asyncio
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
    from faust.transport.producer import ProducerBuffer

    ProducerBuffer.max_messages = 4 * settings.scorer_batch_max + 1000

    original = driver.AIOKafkaConsumerThread._create_worker_consumer

    def create_worker_consumer(self: Any, transport: Any) -> Any:
        consumer = original(self, transport)
        consumer._fetch_max_wait_ms = _installed[0].fetch_max_wait_ms
        return consumer

    driver.AIOKafkaConsumerThread._create_worker_consumer = create_worker_consumer  # type: ignore[method-assign]
    _seek_before_resuming_streams()


def _seek_before_resuming_streams() -> None:
    """Patch both places faust resumes streams after a rebalance (with and without tables)."""
    from faust.tables.recovery import Recovery

    async def on_recovery_completed(self: Any, generation_id: int = 0) -> None:
        # faust-streaming 0.15.3 Recovery.on_recovery_completed, with the seek moved first.
        consumer = self.app.consumer
        self.log.info("Restore complete!")
        await self.app.on_rebalance_complete.send()
        self._set_recovery_ended()
        callbacks = [
            asyncio.ensure_future(
                table.on_recovery_completed(self.actives_for_table[table], self.standbys_for_table[table])
            )
            for table in self.tables.values()
        ]
        if callbacks:
            await asyncio.wait(callbacks)
        if self.app.consumer_generation_id != generation_id:
            self.log.warning("Recovery rebalancing again")
            return
        await _seek_then_resume(self, consumer)
        if not self.app.assignor.assigned_standbys():
            self.tables.on_standbys_ready()
        self.app.on_rebalance_end()
        self.log.info("Worker ready")

    async def resume_streams(self: Any, generation_id: int = 0) -> None:
        # faust-streaming 0.15.3 Recovery._resume_streams (apps without tables), seek first.
        await self.app.on_rebalance_complete.send()
        if self.app.consumer_generation_id != generation_id:
            self.log.warning("Recovery rebalancing again")
            return
        await _seek_then_resume(self, self.app.consumer)
        self.tables.on_standbys_ready()
        self.app.on_rebalance_end()
        self.log.info("Worker ready")

    Recovery.on_recovery_completed = on_recovery_completed  # type: ignore[method-assign]
    Recovery._resume_streams = resume_streams  # type: ignore[method-assign]


async def _seek_then_resume(recovery: Any, consumer: Any) -> None:
    """Seek the stream partitions to their committed offsets, then resume them and the flow."""
    app = recovery.app
    assignment = consumer.assignment()
    streams = {tp for tp in assignment if not recovery._is_changelog_tp(tp)}
    if streams:
        consumer.pause_partitions(streams)  # what was fetched from the old positions is dropped
        await recovery._wait(consumer.perform_seek(), timeout=app.conf.broker_request_timeout)
        recovery.log.info("Sought stream partitions to committed offsets; resuming them.")
        consumer.resume_partitions(streams)
    recovery.completed.set()
    app.flow_control.resume()
    consumer.resume_flow()
    await app._fetcher.maybe_start()
    recovery.tables.on_actives_ready()
