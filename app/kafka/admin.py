"""Topic administration shared by the broker, the producer CLI and the stack runner."""

from __future__ import annotations

import concurrent.futures
import logging
from functools import partial
from typing import Any

from app.kafka import topics
from app.kafka.outage import RIDE_THROUGH_S, Outage, quiet_client_logs, retry
from app.settings import SharedSettings

log = logging.getLogger(__name__)


def client_config(settings: SharedSettings, **extra: Any) -> dict[str, Any]:
    """confluent-kafka settings every fraudlens client shares (SASL/TLS passed through)."""
    config: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "security.protocol": settings.kafka_security_protocol,
    }
    if settings.kafka_ssl_ca_file:
        config["ssl.ca.location"] = str(settings.kafka_ssl_ca_file)
    if settings.kafka_sasl_mechanism:
        config["sasl.mechanism"] = settings.kafka_sasl_mechanism
        config["sasl.username"] = settings.kafka_sasl_username or ""
        password = settings.kafka_sasl_password
        config["sasl.password"] = password.get_secret_value() if password else ""
    config.update(extra)
    return config


def producer_config(settings: SharedSettings, **extra: Any) -> dict[str, Any]:
    """``client_config`` for a producer: every fraudlens producer compresses its batches."""
    return client_config(settings, **{"compression.type": settings.compression, **extra})


def ensure_topics(
    settings: SharedSettings,
    names: tuple[str, ...] = topics.APP_TOPICS,
    configs: dict[str, dict[str, str]] | None = None,
    limit_s: float = RIDE_THROUGH_S,
) -> list[str]:
    """Create the app's topics with the configured partition count (and ``configs[name]``);
    returns those created. An existing topic is left as it is.

    Pre-creating matters: a topic auto-created by a producer's first write gets one partition.
    A broker that does not answer is waited for (one log line when it goes, one when it is back)
    up to ``limit_s``, then :class:`app.kafka.outage.BrokerUnreachable` (roles start before or while
    the broker restarts).
    """
    from confluent_kafka.admin import AdminClient

    outage = Outage("creating topics", log)
    admin = AdminClient(quiet_client_logs(client_config(settings), outage))
    create = partial(create_missing, admin, names, settings.partitions, settings.replication_factor, configs)
    return retry(create, outage, limit_s, _retriable)


def create_missing(
    admin: Any,
    names: tuple[str, ...],
    partitions: int,
    replication_factor: int,
    configs: dict[str, dict[str, str]] | None = None,
) -> list[str]:
    """Create those of ``names`` the broker lacks, through ``admin`` (a confluent-kafka
    AdminClient); returns those created. A topic a concurrent creator made first is not an error."""
    from confluent_kafka.admin import NewTopic

    configs = configs or {}
    existing = admin.list_topics(timeout=15).topics
    wanted = [
        NewTopic(name, partitions, replication_factor, config=configs.get(name, {}))
        for name in names
        if name not in existing
    ]
    created = []
    for name, future in admin.create_topics(wanted).items() if wanted else []:
        try:
            future.result(timeout=15)
            created.append(name)
        except Exception as exc:  # a concurrent creator won the race
            if "exist" not in str(exc).lower():
                raise
    return created


def _retriable(exc: BaseException) -> bool:
    from confluent_kafka import KafkaException

    return isinstance(exc, KafkaException | concurrent.futures.TimeoutError | TimeoutError)
