"""The relay's flood control as plain data: token buckets, refusals, the close."""

from __future__ import annotations

from app.relay.ratelimit import FloodGuard, FrameAction, TokenBucket, rate_limited_text
from app.settings import Settings

SETTINGS = Settings(
    relay_frame_rate=10,
    relay_frame_burst=5,
    relay_explain_rate=1,
    relay_explain_burst=2,
    relay_flood_strikes=3,
)


def test_bucket_allows_its_burst_then_its_rate() -> None:
    bucket = TokenBucket.full(rate=10, burst=5, now=0.0)
    assert [bucket.take(0.0) for _ in range(6)] == [True] * 5 + [False]
    assert bucket.take(0.1) and not bucket.take(0.1)  # one token per 1/rate seconds
    assert sum(bucket.take(100.0) for _ in range(10)) == 5, "never more than the burst"


def test_a_clock_going_backwards_grants_nothing() -> None:
    bucket = TokenBucket.full(rate=10, burst=1, now=5.0)
    assert bucket.take(5.0) and not bucket.take(4.0)


def test_a_flood_is_refused_then_closed() -> None:
    guard = FloodGuard(SETTINGS, now=0.0)
    actions = [guard.check(0.0) for _ in range(10)]
    assert actions[:5] == [FrameAction.ALLOW] * 5
    assert actions[5:8] == [FrameAction.REFUSE] * 3  # one per strike
    assert actions[8:] == [FrameAction.CLOSE] * 2
    assert guard.refused == 5


def test_a_client_within_its_rate_is_never_refused() -> None:
    guard = FloodGuard(SETTINGS, now=0.0)
    assert all(guard.check(i * 0.1) is FrameAction.ALLOW for i in range(1000))


def test_somewhat_over_the_rate_is_slowed_not_closed() -> None:
    guard = FloodGuard(SETTINGS, now=0.0)  # 15 frames/s against 10/s: strikes refill as fast
    actions = [guard.check(i / 15) for i in range(1500)]
    assert FrameAction.REFUSE in actions and FrameAction.CLOSE not in actions


def test_explain_now_has_its_own_stricter_bucket() -> None:
    guard = FloodGuard(SETTINGS, now=0.0)
    assert [guard.check_explain(0.0) for _ in range(3)] == [FrameAction.ALLOW] * 2 + [FrameAction.REFUSE]
    assert guard.check(0.0) is FrameAction.ALLOW, "other frames are unaffected"
    assert guard.check_explain(1.0) is FrameAction.ALLOW


def test_the_refusal_text_names_the_limit_and_the_close_code() -> None:
    assert "10 per second (5 at once)" in rate_limited_text(SETTINGS, "frames")
    assert "1 per second (2 at once)" in rate_limited_text(SETTINGS, "explain_now")
    assert "4029" in rate_limited_text(SETTINGS, "frames")
