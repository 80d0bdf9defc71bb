"""Typed settings by concern, read once from the environment (prefix ``FRAUDLENS_``) and passed in.

Each process role gets the settings of its concern and nothing else: ``ScorerSettings``,
``ExplainerSettings``, ``RelaySettings``, each the ``SharedSettings`` (broker, identity, Kafka
clients and security, table stores and their retention windows, record bounds, metrics) plus its
own. ``Settings`` is all of them, for the commands that span roles (``fraudlens up``, ``tables``,
``lag``, the producer). Every environment variable keeps its name whichever class reads it. The
development broker's own options are its command line (``fraudlens broker --help``).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEFAULT_BROKER_PORT = 9092


class SharedSettings(BaseSettings):
    """What every role reads; agents never read ``os.environ`` themselves."""

    # Every number finite: "inf" or "nan" in an environment variable is an error at start.
    model_config = SettingsConfigDict(env_prefix="FRAUDLENS_", extra="ignore", allow_inf_nan=False)

    broker: str = Field(
        f"kafka://127.0.0.1:{DEFAULT_BROKER_PORT}",
        description="Kafka bootstrap URL(s), kafka://host:port[;host:port]. Unset: the embedded broker.",
    )
    data_dir: Path = Field(Path("data"), description="Local state: table stores, broker data, logs.")
    models_dir: Path = Field(Path("models"), description="The model registry directory.")
    app_id: str = Field("fraudlens", description="Faust app id; prefixes changelog topics and groups.")
    explainer_app_id: str | None = Field(
        None,
        description="Explainer consumer group and changelog prefix [<app_id>-explainer].",
    )
    partitions: int = Field(6, ge=1, le=256, description="Partitions of every topic the app creates.")
    replication_factor: int = Field(1, ge=1, description="Replication of every topic the app creates.")
    instance_id: str | None = Field(None, description="Static group membership id for this worker.")
    role: str = Field("worker", description="Set by `fraudlens worker --role`; names the state dir.")
    session_timeout_s: float = Field(10.0, gt=0, description="Group session timeout.")
    heartbeat_interval_s: float = Field(1.0, gt=0, description="Group heartbeat interval.")
    fetch_max_wait_ms: int = Field(500, ge=0, description="Consumer fetch long-poll bound.")
    producer_linger_ms: float = Field(2.0, ge=0, description="Producer batching delay.")
    compression: Literal["none", "gzip", "snappy", "lz4", "zstd"] = Field(
        "lz4",
        description="Compression of every batch fraudlens produces (JSON shrinks ~4x; the embedded "
        "broker's store, and so its CPU, with it). Consumers read any codec.",
    )
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: str | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_ca_file: Path | None = Field(
        None, description="CA bundle (PEM) that signed the brokers' TLS certificates [the system's]."
    )
    # Table stores: one RocksDB per table partition; each holds up to 2 write buffers and its
    # own block cache, so a worker's store memory is at most
    # partitions held × tables × (2 × write buffer + block cache). Faust's defaults (64 MB × 3
    # and a 2 GiB cache per partition) let it grow for hours.
    rocksdb_write_buffer_mb: int = Field(
        8, ge=1, le=1024, description="RocksDB memtable size per table partition (two at most)."
    )
    rocksdb_block_cache_mb: int = Field(
        16, ge=1, le=4096, description="RocksDB block cache per table partition."
    )
    dedup_window_s: float = Field(86400.0, gt=0, description="How long a re-sent id gets its stored verdict.")
    explanation_retention_s: float = Field(
        86400.0, gt=0, description="How long explanation rows (and dedup of re-sent verdicts) are kept."
    )
    max_message_bytes: int = Field(65536, ge=1024, description="Larger inputs go to the DLQ.")
    dlq_value_prefix_bytes: int = Field(
        4096,
        ge=0,
        le=262_144,
        description="A DLQ record carries the rejected value's length, SHA-256 and only its first "
        "this many bytes (base64), so it always fits the broker's record size, whatever the input.",
    )
    dlq_key_prefix_bytes: int = Field(
        1024, ge=0, le=65_536, description="The same bound for the rejected record's key."
    )
    metrics_port: int | None = Field(
        None, ge=1, le=65535, description="Serve Prometheus /metrics here (token required); unset: off."
    )
    metrics_host: str = Field("127.0.0.1", description="Interface the metrics endpoint listens on.")
    token_secret: SecretStr | None = Field(
        None, description="HMAC secret of console tokens [a file generated once in the data dir]."
    )
    verdict_path_nice: int = Field(
        -5,
        ge=-20,
        le=0,
        description="Nice of the broker and the scorer where the process may raise its priority "
        "(root or CAP_SYS_NICE); otherwise they stay where they are.",
    )

    @field_validator("broker")
    @classmethod
    def _broker_url(cls, value: str) -> str:
        if not value.startswith("kafka://") or len(value) <= len("kafka://"):
            raise ValueError("FRAUDLENS_BROKER must look like kafka://host:port")
        return value

    @property
    def bootstrap_servers(self) -> str:
        """host:port[,host:port] for confluent-kafka and aiokafka."""
        return self.broker.removeprefix("kafka://").replace(";", ",")

    @property
    def explainer_group(self) -> str:
        """The explainer's own Faust app id: its restarts never rebalance the scorer's group."""
        return self.explainer_app_id or f"{self.app_id}-explainer"

    @property
    def worker_dir(self) -> Path:
        """This process's own state dir (two workers on one machine need two data dirs)."""
        suffix = f"-{self.instance_id}" if self.instance_id else ""
        return self.data_dir / f"{self.role}{suffix}"


class PolicySettings(SharedSettings):
    """The priority rules of explanations: the explainer routes by them, the relay shows them."""

    explain_high_decisions: tuple[str, ...] = Field(
        ("deny", "review"), description="Verdict decisions whose explanation is high priority."
    )
    explain_high_min_amount: float = Field(
        1000.0, ge=0, description="Amounts from here on are high priority."
    )
    explain_normal_min_amount: float = Field(
        100.0, ge=0, description="Amounts from here on are normal priority."
    )
    explain_low_sample_rate: float = Field(
        1.0, ge=0, le=1, description="Share of low-priority verdicts explained (the rest: on demand only)."
    )
    explain_counterfactual_decisions: tuple[Literal["approve", "review", "deny"], ...] = Field(
        ("deny", "review"),
        description="Verdict decisions that get a counterfactual ('what would change it') by themselves; "
        "empty: only on demand (docs/explainer.md has its cost).",
    )
    explain_counterfactual_priority: Literal["high", "normal", "low"] = Field(
        "high", description="Queue of the counterfactuals routed by explain_counterfactual_decisions."
    )
    explain_confidence: float = Field(
        0.95, gt=0, lt=1, description="Confidence of the uncertainty's conformal prediction set."
    )
    explain_similar_cases: int = Field(
        3,
        ge=0,
        le=10,
        description="Similar past cases (nearest labelled reference transactions in SHAP space) "
        "added to each complete contributions explanation; 0: none.",
    )
    explain_uncertain_high: bool = Field(
        True,
        description="Route the contributions of an uncertain verdict (its probability interval "
        "straddles the review or deny threshold) at high priority.",
    )


class ScorerSettings(SharedSettings):
    """The scorer's loop: batching, commits, the model version it scores with."""

    scorer_batch_max: int = Field(1000, ge=1, description="Most transactions scored in one batch.")
    scorer_batch_within_s: float = Field(
        0.0,
        ge=0,
        description="Longest wait for more transactions once one arrived; 0: a batch is what arrived "
        "while the last one was scored (lowest latency, measured: docs/performance.md).",
    )
    scorer_linger_ms: float = Field(
        0.0,
        ge=0,
        description="The scorer's producer batching delay: its micro-batch already batches, so a "
        "linger only delays the verdicts.",
    )
    scorer_commit_interval_s: float = Field(
        1.0,
        gt=0,
        description="How often the scorer commits processed offsets (a crash replays at most this).",
    )
    model_version: str | None = Field(None, description="Pin a model version (default: CURRENT).")
    model_check_interval_s: float = Field(
        1.0, gt=0, description="How often an unpinned scorer looks for a newly promoted model."
    )
    scorer_inline_explain: Literal["off", "tree", "interventional"] = Field(
        "off",
        description="Benchmarks only (bench.sync): explain each verdict inline before sending it, "
        "the synchronous design the async pipeline replaces. Never set it in production.",
    )


class ExplainerSettings(PolicySettings):
    """The explainer's agents: scheduling, batching, method, cache, OS priority."""

    stream_buffer_maxsize: int = Field(32768, ge=1, description="Faust per-stream buffer.")
    explain_aging_s: float = Field(
        30.0, gt=0, description="Longest a request waits behind newer higher-priority work."
    )
    explain_batch_max: int = Field(64, ge=1, description="Most requests explained in one SHAP batch.")
    explain_batch_budget_ms: float = Field(
        30.0,
        gt=0,
        description="Batches are sized so their SHAP time (measured per row) stays within this: "
        "it bounds how long new high-priority work waits for the batch in flight.",
    )
    explain_fast_path: bool = Field(
        True,
        description="The router hands requests straight to this process's workers (no explain.* "
        "record) while their queue has room.",
    )
    explain_aged_share: float = Field(
        0.25,
        gt=0,
        le=1,
        description="Share of each batch reserved for aged requests (oldest first); 1: aged always first.",
    )
    explain_batch_within_s: float = Field(0.005, ge=0, description="Longest wait to fill a SHAP batch.")
    explain_method: Literal["tree", "interventional"] = Field("tree", description="SHAP method.")
    explain_max_attempts: int = Field(3, ge=1, description="Starts before a request is failed for good.")
    explain_queue_max: int = Field(10_000, ge=1, description="Requests held in memory per priority.")
    explain_handover_max: int = Field(
        1_000,
        ge=0,
        description="Requests of a priority handed straight to the workers while fewer than this "
        "wait in memory; past it they are published on explain.<priority>. Bounds how long the "
        "oldest handed-over request holds its verdict partition's acks (app/explainer/acks.py).",
    )
    explain_cache_max: int = Field(
        10_000,
        ge=0,
        description="Explanations kept in the in-memory cache per process (~3 KB each; not kept on restart).",
    )
    explain_stats_every_s: float = Field(10.0, gt=0, description="How often an explainer logs its counts.")
    explainer_nice: int = Field(10, ge=0, le=19, description="os.nice increment of explainer processes.")
    explainer_sched_idle: bool = Field(
        False,
        description="Run explainers under SCHED_IDLE (a woken broker or scorer preempts them at once; "
        "app/runtime/priority.py) instead of at explainer_nice only.",
    )


class RelaySettings(PolicySettings):
    """The relay (websocket server of the support console), its access tokens and flood control."""

    relay_host: str = Field("127.0.0.1", description="Interface the relay listens on.")
    relay_port: int = Field(
        8765, ge=1, le=65535, description="The relay's one port: console at /, websocket at /ws."
    )
    relay_public_url: str | None = Field(
        None, description="Console URL as browsers reach it (printed by `fraudlens up`) [http://host:port/]."
    )
    relay_allowed_origins: tuple[str, ...] = Field(
        (), description="Origins (scheme://host:port) allowed to open the websocket besides the relay's own."
    )
    relay_allow_localhost: bool = Field(True, description="Also allow pages served from localhost/127.0.0.1.")
    relay_max_frame_bytes: int = Field(
        65536, ge=256, description="Largest client frame; a larger one closes the connection (1009)."
    )
    relay_client_queue_max: int = Field(
        2000, ge=1, description="Messages queued for one client before it is dropped as lagging."
    )
    relay_replay_max: int = Field(20_000, ge=1, description="Events kept for clients that resume.")
    relay_state_max: int = Field(50_000, ge=1, description="Transactions whose state the relay keeps.")
    relay_orphan_wait_s: float = Field(
        5.0, ge=0, description="How long an explanation update waits for its verdict before going out alone."
    )
    relay_stats_every_s: float = Field(1.0, gt=0, description="How often clients get the stats message.")
    relay_max_record_bytes: int = Field(
        65536, ge=1024, description="Largest verdict or update the relay passes on; larger ones are skipped."
    )
    relay_feed_stall_s: float = Field(
        5.0, gt=0, description="A broker that owes the relay an answer this long counts as unreachable."
    )
    token_ttl_s: float = Field(8 * 3600.0, gt=0, description="Lifetime of `fraudlens token create` tokens.")
    relay_frame_rate: float = Field(20.0, gt=0, description="Client frames per second a client may send.")
    relay_frame_burst: int = Field(40, ge=1, description="Client frames a client may send at once.")
    relay_explain_rate: float = Field(2.0, gt=0, description="explain_now requests per second per client.")
    relay_explain_burst: int = Field(10, ge=1, description="explain_now requests a client may send at once.")
    relay_flood_strikes: int = Field(
        100,
        ge=1,
        description="Refused (rate_limited) frames a client may accumulate, refilled at the frame rate; "
        "one more closes the connection with code 4029.",
    )


class Settings(ScorerSettings, ExplainerSettings, RelaySettings):
    """Every concern at once: the commands that span roles (``fraudlens up``, ``tables``, ``lag``)."""


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """The command line's settings, read once per process (the roles get theirs passed in)."""
    return Settings()
