"""Topic administration shared by the broker, the producer CLI and the stack runner."""

from __future__ import annotations

from typing import Any

from app import topics
from app.settings import Settings


def client_config(settings: Settings, **extra: Any) -> dict[str, Any]:
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


def producer_config(settings: Settings, **extra: Any) -> dict[str, Any]:
    """``client_config`` for a producer: every fraudlens producer compresses its batches."""
    return client_config(settings, **{"compression.type": settings.compression, **extra})


def ensure_topics(
    settings: Settings,
    names: tuple[str, ...] = topics.APP_TOPICS,
    configs: dict[str, dict[str, str]] | None = None,
) -> list[str]:
    """Create the app's topics with the configured partition count (and ``configs[name]``);
    returns those created. An existing topic is left as it is.

    Pre-creating matters: a topic auto-created by a producer's first write gets one partition.
    """
    from confluent_kafka.admin import AdminClient, NewTopic

    admin = AdminClient(client_config(settings))
    existing = admin.list_topics(timeout=15).topics
    wanted = [
        NewTopic(name, settings.partitions, settings.replication_factor, config=(configs or {}).get(name, {}))
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
