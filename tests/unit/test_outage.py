"""The outage tracker and the start-up retry (app.kafka.outage): one line each way, bounded retries."""

from __future__ import annotations

import logging

import pytest
from confluent_kafka import KafkaError, KafkaException

from app.kafka.outage import BrokerUnreachable, Outage, backoff, retry


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


def test_one_line_when_an_outage_starts_and_one_when_it_ends(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    outage = Outage("scorer", logging.getLogger("t"), clock)
    with caplog.at_level(logging.WARNING):
        for _ in range(50):  # every reconnect attempt reports
            outage.down("connection refused")
            clock.sleep(0.5)
        outage.up()
        outage.up()
    assert lines(caplog) == [
        "scorer: broker unreachable for 2 s (connection refused); retrying until it is back",
        "scorer: broker reachable again after 25.0 s",
    ]
    assert outage.count == 1 and not outage.active


def test_a_blip_shorter_than_the_grace_is_not_an_outage(caplog: pytest.LogCaptureFixture) -> None:
    clock = Clock()
    outage = Outage("scorer", logging.getLogger("t"), clock)
    with caplog.at_level(logging.WARNING):
        outage.down("1/1 brokers are down")
        clock.sleep(0.1)
        outage.up()
    assert lines(caplog) == [] and outage.count == 0


def test_retry_backs_off_until_the_broker_answers() -> None:
    clock = Clock()
    outage = Outage("creating topics", logging.getLogger("t"), clock)
    answers = iter([KafkaException(KafkaError(KafkaError._TRANSPORT))] * 6 + ["ok"])

    def call() -> str:
        answer = next(answers)
        if isinstance(answer, Exception):
            raise answer
        return answer

    assert retry(call, outage, limit_s=60, sleep=clock.sleep) == "ok"
    assert clock.now - 100.0 == pytest.approx(sum(backoff(i) for i in range(6)))
    assert not outage.active and outage.count == 1


def test_retry_gives_up_after_the_bound_and_never_retries_other_errors() -> None:
    clock = Clock()
    outage = Outage("creating topics", logging.getLogger("t"), clock)

    def unreachable() -> None:
        raise KafkaException(KafkaError(KafkaError._TRANSPORT))

    with pytest.raises(BrokerUnreachable, match="no answer from the broker for 60 s"):
        retry(unreachable, outage, limit_s=60, sleep=clock.sleep)
    assert 60 <= clock.now - 100.0 < 66  # the last pause is at most the 5 s cap

    def refused() -> None:
        raise ValueError("bad config")

    with pytest.raises(ValueError):
        retry(refused, Outage("x", logging.getLogger("t"), clock), sleep=clock.sleep)


def test_backoff_doubles_to_its_cap() -> None:
    assert [backoff(i) for i in range(7)] == [0.2, 0.4, 0.8, 1.6, 3.2, 5.0, 5.0]


def test_repeated_client_errors_pass_once_per_window_with_the_count_held_back() -> None:
    from app.kafka.outage import RepeatedClientErrors

    clock = Clock()
    repeats = RepeatedClientErrors(every_s=60.0, clock=clock)

    def record(name: str, msg: str, level: int = logging.ERROR) -> logging.LogRecord:
        return logging.LogRecord(name, level, __file__, 1, msg, (), None)

    passed = []
    for _ in range(100):  # ten a second for ten seconds, as while the broker is away
        item = record("aiokafka", "Unable connect to node with id %s")
        if repeats.filter(item):
            passed.append(item.msg)
        clock.sleep(0.1)
    assert passed == ["Unable connect to node with id %s"]
    clock.sleep(60)
    later = record("aiokafka", "Unable connect to node with id %s")
    assert repeats.filter(later) and later.msg.endswith("[99 more like this in the last 60 s]")
    assert repeats.filter(record("faust.worker", "Starting"))  # other loggers pass untouched
    assert repeats.filter(record("aiokafka", "Updating subscribed topics", logging.INFO))


def test_client_logs_drop_connection_lines_and_hand_a_fatal_line_on() -> None:
    from app.kafka.outage import quiet_client_logs

    fatal: list[str] = []
    outage = Outage("scorer", logging.getLogger("t"), on_fatal=fatal.append)
    logger = quiet_client_logs({}, outage)["logger"]

    def record(facility: str, text: str) -> logging.LogRecord:
        return logging.LogRecord(
            logger.name, logging.ERROR, __file__, 1, "%s [%s] %s", (facility, "c", text), None
        )

    assert not logger.filter(record("FAIL", "Connect to ipv4#127.0.0.1:1 failed: Connection refused"))
    assert logger.filter(record("SESSTMOUT", "Consumer group session timed out"))
    assert logger.filter(record("FATAL", "Fatal error: out of order sequence number"))
    assert fatal == ["Fatal error: out of order sequence number"]
