"""RetentionPlanner and topic_policy: pure trimming decisions from (time, high watermark) samples."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fraudlens_devbroker.retention import (
    COMPACTION_CONFIG,
    RetentionPlanner,
    RetentionTask,
    TopicPolicy,
    topic_policy,
)

TOPIC = "transactions"
# What fraudlens passes as --time-retention-only (its app.kafka.topics.READ_BY_USERS; the product's
# tests/unit/test_broker_command.py checks that it does).
READ_BY_USERS = frozenset({"verdicts", "explanation.updates", "transactions.dlq", "explain.requests.dlq"})
DELETE = TopicPolicy(delete=True, compact=False, retention_s=None)
COMPACT = TopicPolicy(delete=False, compact=True, retention_s=None)


def planner_with(
    samples: list[tuple[float, int]],
    max_retention_s: float = 1_000.0,
    grace_s: float = 10.0,
    topic: str = TOPIC,
) -> RetentionPlanner:
    planner = RetentionPlanner(max_retention_s, consumed_grace_s=grace_s, time_retention_only=READ_BY_USERS)
    for taken, high in samples:
        planner.observe(topic, 0, high, taken)
    return planner


# ------------------------------------------------------------------------- topic_policy


def test_topic_without_cleanup_policy_is_delete_with_broker_retention() -> None:
    assert topic_policy({}) == TopicPolicy(delete=True, compact=False, retention_s=None)


def test_compact_topic_is_compact_only() -> None:
    assert topic_policy({"cleanup.policy": "compact"}) == TopicPolicy(False, True, None)


def test_compact_delete_topic_is_both_with_its_retention_in_seconds() -> None:
    policy = topic_policy({"cleanup.policy": "compact,delete", "retention.ms": "3600000"})

    assert policy == TopicPolicy(delete=True, compact=True, retention_s=3600.0)


def test_infinite_or_empty_retention_ms_means_no_topic_retention() -> None:
    assert topic_policy({"retention.ms": "-1"}).retention_s is None
    assert topic_policy({"retention.ms": ""}).retention_s is None
    assert topic_policy({"retention.ms": None}).retention_s is None


def test_fractional_retention_ms_is_kept_in_seconds() -> None:
    assert topic_policy({"retention.ms": "1500"}).retention_s == 1.5


# ---------------------------------------------------------------------------- offset_at


def test_offset_at_is_none_without_samples() -> None:
    assert RetentionPlanner(100.0).offset_at(TOPIC, 0, 1_000.0) is None


def test_offset_at_before_the_first_sample_is_none() -> None:
    planner = planner_with([(100.0, 5), (200.0, 9)])

    assert planner.offset_at(TOPIC, 0, 99.9) is None


def test_offset_at_is_the_last_sample_taken_no_later_than_the_moment() -> None:
    planner = planner_with([(100.0, 5), (200.0, 9), (300.0, 20)])

    assert planner.offset_at(TOPIC, 0, 100.0) == 5
    assert planner.offset_at(TOPIC, 0, 199.9) == 5
    assert planner.offset_at(TOPIC, 0, 200.0) == 9
    assert planner.offset_at(TOPIC, 0, 10_000.0) == 20


def test_offset_at_keeps_partitions_and_topics_apart() -> None:
    planner = RetentionPlanner(100.0)
    planner.observe(TOPIC, 0, 5, 10.0)
    planner.observe(TOPIC, 1, 50, 10.0)
    planner.observe("verdicts", 0, 500, 10.0)

    got = [planner.offset_at(t, p, 20.0) for t, p in [(TOPIC, 0), (TOPIC, 1), ("verdicts", 0), ("x", 0)]]
    assert got == [5, 50, 500, None]


# ------------------------------------------------------------------------- trim by age


def test_delete_topic_is_trimmed_to_the_watermark_one_retention_ago() -> None:
    planner = planner_with([(0.0, 0), (100.0, 50), (200.0, 120), (300.0, 200)])
    policy = TopicPolicy(delete=True, compact=False, retention_s=150.0)

    assert planner.trim_to(TOPIC, 0, policy, [], now=300.0) == 50  # the watermark at t=150


def test_topic_retention_is_capped_by_the_broker_maximum() -> None:
    planner = planner_with([(0.0, 10), (100.0, 50), (200.0, 120), (300.0, 200)], max_retention_s=100.0)
    policy = TopicPolicy(delete=True, compact=False, retention_s=10_000.0)

    assert planner.trim_to(TOPIC, 0, policy, [], now=300.0) == 120  # the watermark at t=200


def test_topic_without_retention_uses_the_broker_maximum() -> None:
    planner = planner_with([(0.0, 10), (100.0, 50), (200.0, 120)], max_retention_s=100.0)

    assert planner.trim_to(TOPIC, 0, DELETE, [], now=200.0) == 50


def test_nothing_is_trimmed_before_any_sample_is_a_retention_old() -> None:
    planner = planner_with([(250.0, 100), (300.0, 200)], max_retention_s=100.0)

    assert planner.trim_to(TOPIC, 0, DELETE, [], now=300.0) is None


def test_an_old_watermark_of_zero_is_nothing_to_trim() -> None:
    planner = planner_with([(0.0, 0), (300.0, 200)], max_retention_s=100.0)

    assert planner.trim_to(TOPIC, 0, DELETE, [], now=300.0) is None


# --------------------------------------------------------------------- consumed trimming


def test_consumed_records_are_trimmed_to_the_slowest_group() -> None:
    planner = planner_with([(0.0, 0), (100.0, 80), (200.0, 100)], max_retention_s=1_000.0, grace_s=10.0)

    assert planner.trim_to(TOPIC, 0, DELETE, [90, 60, 75], now=200.0) == 60


def test_consumed_records_younger_than_the_grace_are_kept() -> None:
    # Every group committed 100, but only 80 of those records are older than the 10 s grace.
    planner = planner_with([(0.0, 0), (100.0, 80), (195.0, 100)], max_retention_s=1_000.0, grace_s=10.0)

    assert planner.trim_to(TOPIC, 0, DELETE, [100, 100], now=200.0) == 80


def test_no_consumed_trimming_when_no_sample_is_older_than_the_grace() -> None:
    planner = planner_with([(195.0, 100)], max_retention_s=1_000.0, grace_s=10.0)

    assert planner.trim_to(TOPIC, 0, DELETE, [100], now=200.0) is None


def test_no_consumed_trimming_without_committed_offsets() -> None:
    planner = planner_with([(0.0, 0), (100.0, 80), (200.0, 100)], max_retention_s=1_000.0)

    assert planner.trim_to(TOPIC, 0, DELETE, [], now=200.0) is None


def test_the_larger_of_age_and_consumed_targets_wins() -> None:
    planner = planner_with([(0.0, 10), (100.0, 80), (200.0, 100)], max_retention_s=150.0, grace_s=10.0)

    by_age_only = planner.trim_to(TOPIC, 0, DELETE, [], now=200.0)
    with_consumers = planner.trim_to(TOPIC, 0, DELETE, [70], now=200.0)
    lagging_consumer = planner.trim_to(TOPIC, 0, DELETE, [5], now=200.0)

    assert (by_age_only, with_consumers, lagging_consumer) == (10, 70, 10)


# ------------------------------------------------------------------ topics users read


def test_without_topics_users_read_every_consumed_topic_is_trimmed() -> None:
    planner = RetentionPlanner(1_000.0, consumed_grace_s=10.0)  # run by hand, no list given
    for taken, high in [(0.0, 0), (100.0, 80), (200.0, 100)]:
        planner.observe("verdicts", 0, high, taken)

    assert planner.trim_to("verdicts", 0, DELETE, [90], now=200.0) == 80


@pytest.mark.parametrize("topic", sorted(READ_BY_USERS))
def test_a_topic_users_read_is_not_trimmed_when_every_group_has_read_it(topic: str) -> None:
    # A group that joins later must still find these records: only time retention removes them.
    planner = planner_with([(0.0, 0), (100.0, 80), (200.0, 100)], max_retention_s=1_000.0, topic=topic)

    assert planner.trim_to(topic, 0, DELETE, [100, 100], now=200.0) is None


@pytest.mark.parametrize("topic", sorted(READ_BY_USERS))
def test_a_topic_users_read_still_expires_with_the_time_retention(topic: str) -> None:
    planner = planner_with([(0.0, 10), (100.0, 80), (200.0, 100)], max_retention_s=150.0, topic=topic)

    assert planner.trim_to(topic, 0, DELETE, [100], now=200.0) == 10  # the watermark at t=50


def test_the_input_topic_is_still_trimmed_once_consumed_beside_a_topic_users_read() -> None:
    planner = RetentionPlanner(1_000.0, consumed_grace_s=10.0, time_retention_only=READ_BY_USERS)
    for topic in (TOPIC, "verdicts"):
        for taken, high in [(0.0, 0), (100.0, 80), (200.0, 100)]:
            planner.observe(topic, 0, high, taken)

    trims = [planner.trim_to(t, 0, DELETE, [90], now=200.0) for t in (TOPIC, "verdicts")]
    assert trims == [80, None]


# ------------------------------------------------------------------ compaction policies


def test_compact_only_topic_is_never_trimmed() -> None:
    planner = planner_with([(0.0, 10), (100.0, 80), (10_000.0, 100)], max_retention_s=10.0)

    assert planner.trim_to(TOPIC, 0, COMPACT, [100], now=10_000.0) is None


def test_compact_delete_topic_honours_its_retention_ms() -> None:
    planner = planner_with([(0.0, 10), (100.0, 80), (200.0, 100)], max_retention_s=1_000.0)
    policy = topic_policy({"cleanup.policy": "compact,delete", "retention.ms": "120000"})

    assert planner.trim_to(TOPIC, 0, policy, [], now=200.0) == 10  # watermark at t=80


class _Entry:
    def __init__(self, value: str) -> None:
        self.value = value


class _Done:
    def __init__(self, value: object = None) -> None:
        self.value = value

    def result(self, timeout: float | None = None) -> object:
        return self.value


class _Admin:
    """describe_configs answers from a {topic: cleanup.policy} map; alter_configs is recorded."""

    def __init__(self, cleanup: dict[str, str]) -> None:
        self.cleanup = cleanup
        self.altered: dict[str, dict[str, str]] = {}

    def describe_configs(self, resources: list[object]) -> dict[object, _Done]:
        return {r: _Done({"cleanup.policy": _Entry(self.cleanup[r.name])}) for r in resources}  # type: ignore[attr-defined]

    def alter_configs(self, resources: list[object]) -> dict[object, _Done]:
        for resource in resources:
            self.altered[resource.name] = dict(resource.set_config_dict)  # type: ignore[attr-defined]
        return {r: _Done() for r in resources}


def test_only_compact_only_topics_are_made_compactable() -> None:
    """compact,delete changelogs (keys never repeat) are left to time retention: a noida-db
    compaction of them stalled the verdict path every 30 s for nothing (DESIGN-NOTES)."""
    cleanup = {"card-changelog": "compact", "predictions-changelog": "compact,delete", "verdicts": "delete"}
    task = RetentionTask.__new__(RetentionTask)
    task.admin, task.policies = _Admin(cleanup), {}

    task._learn_policies(list(cleanup))

    assert set(task.admin.altered) == {"card-changelog"}
    assert task.admin.altered["card-changelog"].items() >= COMPACTION_CONFIG.items()
    assert set(task.policies) == set(cleanup)  # every topic's policy is still learnt (for trimming)


# ----------------------------------------------------------------------- sample history


def test_sample_history_stays_bounded_under_steady_sampling() -> None:
    planner = RetentionPlanner(max_retention_s=100.0, consumed_grace_s=10.0)
    for second in range(5_000):
        planner.observe(TOPIC, 0, second * 10, float(second))

    history = planner.samples[(TOPIC, 0)]
    assert len(history) <= 100 + 60 + 3
    assert history[0][0] <= 4_999 - 100 - 60  # still reaches back past the horizon


def test_a_quiet_spell_after_busy_sampling_keeps_the_last_busy_sample() -> None:
    planner = RetentionPlanner(max_retention_s=100.0, consumed_grace_s=10.0)
    for second in range(1_000):
        planner.observe(TOPIC, 0, second, float(second))
    planner.observe(TOPIC, 0, 5_000, 5_000.0)

    assert len(planner.samples[(TOPIC, 0)]) == 2
    assert planner.trim_to(TOPIC, 0, DELETE, [], now=5_000.0) == 999


def test_a_long_gap_keeps_the_last_sample_before_it() -> None:
    planner = RetentionPlanner(max_retention_s=100.0, consumed_grace_s=10.0)
    planner.observe(TOPIC, 0, 7, 0.0)
    planner.observe(TOPIC, 0, 9, 5.0)
    planner.observe(TOPIC, 0, 12, 10_000.0)

    assert planner.offset_at(TOPIC, 0, 10_000.0 - 100.0) == 9


def _reference_offset_at(samples: list[tuple[float, int]], moment: float) -> int | None:
    earlier = [high for taken, high in samples if taken <= moment]
    return earlier[-1] if earlier else None


@settings(max_examples=200, derandomize=True, database=None)
@given(
    gaps=st.lists(st.floats(0.0, 400.0, allow_nan=False), min_size=1, max_size=60),
    max_retention=st.floats(1.0, 300.0),
    grace=st.floats(0.0, 60.0),
    back=st.floats(0.0, 1.0),
)
def test_pruned_history_answers_every_moment_trim_to_can_ask_like_the_full_history(
    gaps: list[float], max_retention: float, grace: float, back: float
) -> None:
    planner = RetentionPlanner(max_retention, consumed_grace_s=grace)
    samples: list[tuple[float, int]] = []
    now = 0.0
    for index, gap in enumerate(gaps):
        now += gap
        samples.append((now, index * 3))
        planner.observe(TOPIC, 0, index * 3, now)

    moment = now - back * max(max_retention, grace)

    assert planner.offset_at(TOPIC, 0, moment) == _reference_offset_at(samples, moment)
