"""``fraudlens produce``: paced transactions (generated or from a file) to ``transactions``."""

from __future__ import annotations

import contextlib
import itertools
import random
import signal
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from tqdm import tqdm

from app.kafka import topics
from app.kafka.admin import ensure_topics, producer_config
from app.settings import Settings, get_settings


def cli_producer_config(settings: Settings) -> dict[str, Any]:
    return producer_config(settings, **{"linger.ms": 5, "acks": "all"})


def _messages(
    file: Path | None, bad_fraction: float, seed: int, live_time: bool
) -> Iterator[tuple[bytes | None, bytes | None]]:
    from app.model.generator import generate_transactions, restamp
    from app.records.malformed import malformed_messages

    rng = random.Random(seed)
    bad = itertools.cycle(malformed_messages(200, seed)) if bad_fraction > 0 else None
    source: Iterator[dict[str, Any]]
    source = _file_transactions(file) if file else generate_transactions(10**12, seed)
    for tx in source:
        if bad is not None and rng.random() < bad_fraction:
            value, _code = next(bad)
            yield b"bad-" + str(rng.randrange(10**6)).encode(), value
        if live_time and file is None:
            tx = restamp(tx, datetime.now(UTC))
        yield str(tx.get("card_id", "")).encode() or None, orjson.dumps(tx)


def _file_transactions(file: Path) -> Iterator[dict[str, Any]]:
    with file.open("rb") as lines:
        for line in lines:
            if line.strip():
                yield orjson.loads(line)


def run_producer(
    rate: float, count: int | None, file: Path | None, bad_fraction: float, seed: int, live_time: bool
) -> int:
    from confluent_kafka import KafkaException, Producer

    settings = get_settings()
    ensure_topics(settings)
    producer = Producer(cli_producer_config(settings))
    acks = {"ok": 0, "failed": 0}

    def delivered(err: Any, _msg: Any) -> None:
        acks["failed" if err else "ok"] += 1

    signals = _StopSignals()
    start = time.monotonic()
    sent = 0
    with tqdm(total=count, unit="msg", desc="produce", mininterval=1.0) as bar:
        try:
            messages = _messages(file, bad_fraction, seed, live_time)
            while count is None or sent < count:
                _pace(start, sent, rate)  # before the message is made: its event time is "now"
                key, value = next(messages, (None, None))
                if value is None and key is None:
                    break
                with signals.deferred():  # a message produced is a message counted
                    producer.produce(topics.TRANSACTIONS, value=value, key=key, on_delivery=delivered)
                    sent += 1
                producer.poll(0)
                bar.update(1)
        except KeyboardInterrupt:
            pass
        except KafkaException as exc:
            print(f"error: {exc}")
    producer.flush(30)
    print(f"sent {sent}, acked {acks['ok']}, failed {acks['failed']}")
    return 0 if acks["failed"] == 0 and acks["ok"] == sent else 1


class _StopSignals:
    """SIGINT, SIGTERM and SIGHUP stop the producer as Ctrl-C does (what was sent is flushed), but
    never between a message being produced and being counted: a stop there made the ack count
    exceed the sent count (exit 1 after a clean stop, seen in test_up)."""

    def __init__(self) -> None:
        self._critical = self._pending = False
        for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(signum, self._interrupted)

    def _interrupted(self, _signum: int, _frame: Any) -> None:
        if self._critical:
            self._pending = True
            return
        raise KeyboardInterrupt

    @contextlib.contextmanager
    def deferred(self) -> Iterator[None]:
        self._critical = True
        try:
            yield
        finally:
            self._critical = False
        if self._pending:
            raise KeyboardInterrupt


def _pace(start: float, sent: int, rate: float) -> None:
    """Hold the average at ``rate``: sleep until message ``sent`` is due."""
    due = start + sent / rate
    delay = due - time.monotonic()
    if delay > 0.001:
        time.sleep(delay)
