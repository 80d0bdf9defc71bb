"""`fraudlens up`'s restart policy: exponential backoff, a healthy run resets it, a bound."""

from __future__ import annotations

from app.runtime.restarts import RestartPolicy, RestartTracker, is_failure


def test_backoff_doubles_up_to_its_cap_then_gives_up() -> None:
    tracker = RestartTracker(RestartPolicy(limit=6, window_s=60, backoff_s=1, max_backoff_s=8))
    delays = [tracker.failed(ran_s=0.5) for _ in range(7)]
    assert delays == [1, 2, 4, 8, 8, 8, None]
    assert tracker.total == 6


def test_a_healthy_run_starts_the_count_afresh() -> None:
    tracker = RestartTracker(RestartPolicy(limit=2, window_s=60, backoff_s=1))
    assert [tracker.failed(1), tracker.failed(1)] == [1, 2]
    assert tracker.failed(60) == 1  # it ran a full window: not "keeps failing"
    assert tracker.failed(1) == 2
    assert tracker.failed(1) is None
    assert tracker.total == 4


def test_limit_zero_never_restarts() -> None:
    assert RestartTracker(RestartPolicy(limit=0)).failed(0) is None


def test_failure_is_a_non_zero_exit_or_a_signal() -> None:
    assert is_failure(1) and is_failure(-9) and is_failure(-15)
    assert not is_failure(0)
