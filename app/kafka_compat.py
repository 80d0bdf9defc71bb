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
    from faust.tables.recovery import Recovery

    async def resume_streams(self: Any, generation_id: int = 0) -> None:
        app = self.app
        consumer = app.consumer
        await app.on_rebalance_complete.send()
        assignment = consumer.assignment()
        if app.consumer_generation_id != generation_id:
            self.log.warning("Recovery rebalancing again")
            return
        if assignment:
            streams = {tp for tp in assignment if not self._is_changelog_tp(tp)}
            # Drop what was fetched from the old positions, seek, and only then resume.
            consumer.pause_partitions(streams)
            await self._wait(consumer.perform_seek(), timeout=app.conf.broker_request_timeout)
            for tp in streams:  # whatever the old fetch left behind must not hide re-fetched records
                consumer._read_offset[tp] = None
            self.log.info("Sought stream partitions to committed offsets; resuming them.")
            consumer.resume_partitions(streams)
        self.completed.set()
        app.flow_control.resume()
        consumer.resume_flow()
        await app._fetcher.maybe_start()
        self.tables.on_actives_ready()
        self.tables.on_standbys_ready()
        app.on_rebalance_end()
        self.log.info("Worker ready")

    Recovery._resume_streams = resume_streams  # type: ignore[method-assign]
