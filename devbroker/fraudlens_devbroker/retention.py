"""Retention for the embedded broker: keep noida-db's store small so nothing grows with time.

noida-db rewrites its whole store as one JSON file after every change, so its CPU, memory, disk
traffic, restart time and the data a SIGKILL loses all grow with the data it holds (measured:
0.6% idle but 77-86% of a core at 1,000 msg/s with 1M records, against 12-15% when empty). It
never applies ``retention.ms`` itself, and compacts only topics whose segments roll. So the
broker process trims, every few seconds, with DeleteRecords:

* ``delete`` topics (and the delete half of ``compact,delete``): records older than the topic's
  ``retention.ms``, capped at the broker's ``max_retention_s``; record age is known from
  (time, high watermark) samples, so no record is read;
* consumed records: below every group's committed offset, once older than ``consumed_grace_s``,
  except on the topics users read (``time_retention_only``; fraudlens passes its
  ``app.kafka.topics.READ_BY_USERS``: verdicts, explanation updates, the DLQs), which keep time
  retention only, so a consumer group that joins later still finds them (Kafka never trims what
  was read either);
* ``compact`` topics get ``segment.ms`` (10 s) and ``min.cleanable.dirty.ratio`` low enough
  that noida-db compacts them (a table changelog keeps the latest value per key). ``compact,delete``
  topics do not: their keys never repeat (fraudlens's transaction ids and signatures), so
  compaction removes nothing there and time retention alone bounds them, while each noida-db
  compaction pauses the broker for a time that grows with what it rewrites.

Measured with ``python -m bench.stall_trace``: DESIGN-NOTES, "The embedded broker's periodic stall".
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict, deque
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

INTERNAL_PREFIX = "__"
COMPACTION_CONFIG = {"segment.ms": "10000", "min.cleanable.dirty.ratio": "0.1"}


@dataclass
class TopicPolicy:
    delete: bool
    compact: bool
    retention_s: float | None  # None: forever (still capped by the broker)

    @property
    def broker_compacts(self) -> bool:
        """Whether the broker has noida-db compact it: compact-only topics (see the module doc)."""
        return self.compact and not self.delete


@dataclass
class RetentionPlanner:
    """Pure bookkeeping: which offset each partition may be trimmed to, given observations."""

    max_retention_s: float
    consumed_grace_s: float = 10.0
    time_retention_only: frozenset[str] = frozenset()  # the topics users read (module doc)
    samples: dict[tuple[str, int], deque[tuple[float, int]]] = field(
        default_factory=lambda: defaultdict(deque)
    )

    def observe(self, topic: str, partition: int, high_watermark: int, now: float) -> None:
        history = self.samples[(topic, partition)]
        history.append((now, high_watermark))
        horizon = now - max(self.max_retention_s, self.consumed_grace_s) - 60
        while len(history) > 2 and history[1][0] < horizon:
            history.popleft()

    def offset_at(self, topic: str, partition: int, moment: float) -> int | None:
        """The high watermark at the last sample taken no later than ``moment``."""
        best = None
        for taken, offset in self.samples.get((topic, partition), ()):
            if taken > moment:
                break
            best = offset
        return best

    def trim_to(
        self, topic: str, partition: int, policy: TopicPolicy, committed: list[int], now: float
    ) -> int | None:
        if not policy.delete:
            return None
        retention = min(policy.retention_s or self.max_retention_s, self.max_retention_s)
        targets = [self.offset_at(topic, partition, now - retention)]
        if committed and topic not in self.time_retention_only:
            aged = self.offset_at(topic, partition, now - self.consumed_grace_s)
            if aged is not None:
                targets.append(min(min(committed), aged))
        found = [t for t in targets if t is not None and t > 0]
        return max(found) if found else None


def topic_policy(config: dict[str, Any]) -> TopicPolicy:
    cleanup = str(config.get("cleanup.policy", "delete"))
    retention_ms = config.get("retention.ms")
    retention = None if retention_ms in (None, "", "-1") else float(retention_ms) / 1000
    return TopicPolicy("delete" in cleanup, "compact" in cleanup, retention)


class RetentionTask:
    """Runs the planner against the broker with confluent-kafka's admin client (blocking calls)."""

    def __init__(
        self,
        bootstrap: str,
        max_retention_s: float,
        consumed_grace_s: float = 10.0,
        time_retention_only: frozenset[str] = frozenset(),
    ) -> None:
        from confluent_kafka import Consumer
        from confluent_kafka.admin import AdminClient

        self.admin = AdminClient({"bootstrap.servers": bootstrap})
        self.watermarks = Consumer({"bootstrap.servers": bootstrap, "group.id": "fraudlens-broker-retention"})
        self.planner = RetentionPlanner(max_retention_s, consumed_grace_s, time_retention_only)
        self.policies: dict[str, TopicPolicy] = {}
        self.last_low: dict[tuple[str, int], int] = {}
        self.trimmed_records = 0

    def run_once(self, now: float | None = None) -> int:
        """One pass; returns how many records it deleted."""
        now = time.time() if now is None else now
        metadata = self.admin.list_topics(timeout=10)
        topics = {
            t: len(m.partitions) for t, m in metadata.topics.items() if not t.startswith(INTERNAL_PREFIX)
        }
        self._learn_policies([t for t in topics if t not in self.policies])
        committed = self._committed_offsets()
        deletions = self._plan(topics, committed, now)
        return self._delete(deletions)

    def _plan(
        self, topics: dict[str, int], committed: dict[tuple[str, int], list[int]], now: float
    ) -> list[Any]:
        from confluent_kafka import TopicPartition

        deletions = []
        for topic, count in topics.items():
            policy = self.policies.get(topic)
            if policy is None:
                continue
            for partition in range(count):
                low, high = self.watermarks.get_watermark_offsets(TopicPartition(topic, partition), timeout=5)
                self.planner.observe(topic, partition, high, now)
                target = self.planner.trim_to(
                    topic, partition, policy, committed.get((topic, partition), []), now
                )
                if target is not None and target > low:
                    deletions.append(TopicPartition(topic, partition, target))
                    self.last_low[(topic, partition)] = low
        return deletions

    def _delete(self, deletions: list[Any]) -> int:
        if not deletions:
            return 0
        deleted = 0
        for tp, future in self.admin.delete_records(deletions).items():
            try:
                result = future.result(timeout=10)
                deleted += result.low_watermark - self.last_low.get((tp.topic, tp.partition), 0)
            except Exception as exc:  # a topic deleted meanwhile, or a transient error: next pass
                log.debug("delete_records %s[%s] failed: %s", tp.topic, tp.partition, exc)
        self.trimmed_records += deleted
        return deleted

    def _learn_policies(self, topics: list[str]) -> None:
        from confluent_kafka.admin import ConfigResource, ResourceType

        if not topics:
            return
        resources = [ConfigResource(ResourceType.TOPIC, t) for t in topics]
        for resource, future in self.admin.describe_configs(resources).items():
            try:
                entries = future.result(timeout=10)
            except Exception as exc:
                log.debug("describe_configs %s failed: %s", resource.name, exc)
                continue
            policy = topic_policy({name: entry.value for name, entry in entries.items()})
            self.policies[resource.name] = policy
            if policy.broker_compacts:
                self._make_compactable(resource.name, entries)

    def _make_compactable(self, topic: str, entries: dict[str, Any]) -> None:
        from confluent_kafka.admin import ConfigResource, ResourceType

        config = {name: entry.value for name, entry in entries.items() if entry.value is not None}
        config.update(COMPACTION_CONFIG)
        resource = ConfigResource(ResourceType.TOPIC, topic, set_config=config)
        for future in self.admin.alter_configs([resource]).values():
            try:
                future.result(timeout=10)
            except Exception as exc:
                log.warning("could not enable compaction on %s: %s", topic, exc)

    def _committed_offsets(self) -> dict[tuple[str, int], list[int]]:
        committed: dict[tuple[str, int], list[int]] = defaultdict(list)
        groups = self.admin.list_consumer_groups().result(timeout=10)
        requests = [_group_request(g.group_id) for g in groups.valid]
        for request in requests:
            try:
                future = self.admin.list_consumer_group_offsets([request])[request.group_id]
                for tp in future.result(timeout=10).topic_partitions:
                    if tp.offset >= 0:
                        committed[(tp.topic, tp.partition)].append(tp.offset)
            except Exception as exc:
                log.debug("offsets of group %s: %s", request.group_id, exc)
        return committed

    def close(self) -> None:
        self.watermarks.close()


def _group_request(group_id: str) -> Any:
    from confluent_kafka import ConsumerGroupTopicPartitions

    return ConsumerGroupTopicPartitions(group_id)
