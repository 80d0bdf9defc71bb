"""The explainer's Faust app and the topics its agents read, built from settings (nothing at import)."""

from __future__ import annotations

import ssl
from dataclasses import dataclass
from typing import Any

import faust
import faust.types.auth
from faust.types import TopicT

from app.explainer.faust_patches import install_faust_patches
from app.kafka import topics
from app.settings import ExplainerSettings


def broker_credentials(settings: ExplainerSettings) -> faust.types.auth.CredentialsT | None:
    """The Kafka security settings every librdkafka client gets (``app.kafka.admin.client_config``),
    for Faust's aiokafka clients: SASL (PLAIN / SCRAM) with or without TLS, or TLS alone."""
    protocol = settings.kafka_security_protocol
    cafile = str(settings.kafka_ssl_ca_file) if settings.kafka_ssl_ca_file else None
    context = ssl.create_default_context(cafile=cafile) if protocol in ("SSL", "SASL_SSL") else None
    if protocol.startswith("SASL"):
        password = settings.kafka_sasl_password
        return faust.SASLCredentials(
            username=settings.kafka_sasl_username or "",
            password=password.get_secret_value() if password else "",
            mechanism=settings.kafka_sasl_mechanism or "PLAIN",
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


def create_app(settings: ExplainerSettings) -> faust.App:
    """Build the Faust app; its local state lives under this process's own data dir."""
    install_faust_patches(settings)
    return faust.App(
        settings.explainer_group,  # its own consumer group and changelog prefix
        broker=settings.broker,
        broker_credentials=broker_credentials(settings),
        store="rocksdb://",
        datadir=str(settings.worker_dir),
        autodiscover=False,
        origin="app",
        # Everything is raw bytes; the agents encode with orjson themselves (faster than Faust's
        # codecs, and bad input must reach the DLQ byte for byte).
        key_serializer="raw",
        value_serializer="raw",
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        topic_allow_declare=True,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        broker_request_timeout=max(30.0, settings.session_timeout_s * 3),
        broker_rebalance_timeout=max(20.0, settings.session_timeout_s * 2),
        consumer_group_instance_id=settings.instance_id,
        consumer_auto_offset_reset="earliest",
        producer_linger=settings.producer_linger_ms / 1000,
        producer_acks=-1,
        producer_compression_type=None if settings.compression == "none" else settings.compression,
        stream_buffer_maxsize=settings.stream_buffer_maxsize,
        stream_wait_empty=False,
        table_standby_replicas=0,
        # A broker that lost acked writes (the embedded one SIGKILLed: docs/limits.md) ends a
        # changelog below the offset a local store already holds, and the store's rows then
        # claim work whose records are gone. At start-up such stores are deleted and rebuilt
        # (app.explainer.stores_ahead); a live worker meeting one at a rebalance stops on this check
        # (exit 69) and its restart rebuilds it.
        recovery_consistency_check=True,
        # Faust's /table/ views expose table data without auth: the web server stays off.
        web_enabled=False,
        logging_config=None,
    )


@dataclass(frozen=True)
class ExplainerTopics:
    """The topics the explainer's agents read, declared on its app. Raw bytes in and out: the
    agents decode with orjson themselves (faster than Faust's codecs). Every explanation topic is
    keyed by transaction_id with the same partition count as verdicts, so one worker owns a
    transaction's verdict, requests and table row together."""

    explain: dict[str, TopicT]  # priority → explain.<priority>
    routing: TopicT  # verdicts and on-demand requests, read by the router as one stream


def declare_topics(app: faust.App) -> ExplainerTopics:
    raw: dict[str, Any] = {
        "key_type": bytes,
        "value_type": bytes,
        "key_serializer": "raw",
        "value_serializer": "raw",
    }
    return ExplainerTopics(
        explain={priority: app.topic(name, **raw) for priority, name in topics.EXPLAIN_TOPICS.items()},
        routing=app.topic(topics.VERDICTS, topics.EXPLAIN_REQUESTS, **raw),
    )
