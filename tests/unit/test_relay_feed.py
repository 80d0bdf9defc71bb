"""The relay's feed status from librdkafka statistics (app.relay.feed), without a broker: the
statistics below have the shape librdkafka 2.x emits (seen on the embedded broker: live, after
SIGSTOP of the broker, after it was stopped)."""

from __future__ import annotations

from typing import Any

from app.relay.feed import FeedWatch, feed_problem

TOPICS = ("verdicts", "explanation.updates")


def stats(state: str = "UP", leader: int = 1, rxidle_s: float = 0.4, waiting: int = 1) -> dict[str, Any]:
    broker = {"nodeid": 1, "nodename": "127.0.0.1:9092", "state": state, "rxidle": int(rxidle_s * 1e6)}
    broker["waitresp_cnt"] = waiting
    partitions = {str(p): {"leader": leader, "desired": True} for p in range(3)}
    partitions["-1"] = {"leader": -1, "desired": False}  # librdkafka's "unassigned" pseudo-partition
    return {
        "brokers": {
            "127.0.0.1:9092/1": broker,
            "GroupCoordinator": {"nodeid": -1, "state": "INIT", "rxidle": -1, "waitresp_cnt": 0},
        },
        "topics": {t: {"partitions": partitions} for t in TOPICS},
    }


def test_a_broker_that_answers_is_a_live_feed() -> None:
    assert feed_problem(stats(), TOPICS, 5.0) is None
    assert feed_problem(stats(rxidle_s=60, waiting=0), TOPICS, 5.0) is None  # idle, owes nothing


def test_a_stopped_frozen_or_forgotten_broker_is_a_problem() -> None:
    assert "down" in (feed_problem(stats(state="DOWN"), TOPICS, 5.0) or "")
    assert "not answered for 9 s" in (feed_problem(stats(rxidle_s=9), TOPICS, 5.0) or "")
    assert "no broker leads" in (feed_problem(stats(leader=-1), TOPICS, 5.0) or "")
    assert "unknown" in (feed_problem(stats(leader=2), TOPICS, 5.0) or "")


def test_the_watch_reports_one_change_each_way_after_the_grace() -> None:
    watch = FeedWatch(grace_s=1.5)
    assert watch.observe(None, 100.0) is None
    assert watch.observe("down", 101.0) is None  # a blip shorter than the grace is no outage
    assert watch.observe(None, 102.0) is None
    assert watch.observe("down", 103.0) is None
    change = watch.observe("down", 104.5)
    assert change is not None and (change.state, change.since, change.reason) == (
        "interrupted",
        103.0,
        "down",
    )
    assert watch.observe("still down", 110.0) is None  # said once
    resumed = watch.observe(None, 120.0)
    assert resumed is not None and (resumed.state, resumed.since, resumed.at) == ("resumed", 103.0, 120.0)
    assert watch.observe(None, 121.0) is None
