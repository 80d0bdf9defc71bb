"""Flood control for websocket clients: token buckets on the frames a client sends.

Every client has three buckets (``FRAUDLENS_RELAY_*`` settings):

- **frames**: every frame takes a token (``relay_frame_rate`` per second, ``relay_frame_burst``
  at once); a frame finding none is answered ``error`` / ``rate_limited`` and not carried out.
- **explain**: ``explain_now`` also takes a token from a stricter bucket (``relay_explain_rate``,
  ``relay_explain_burst``): each request costs the explainers real work.
- **strikes**: each refused frame takes a strike (``relay_flood_strikes`` at once, refilled at the
  frame rate); a refused frame finding no strike left closes the connection with
  ``FLOOD_CLOSE_CODE``. A client sending somewhat over its rate is only slowed down; one that
  keeps sending at more than about twice its rate is disconnected.

The check runs before a frame is parsed, so a flood costs the relay little. Time is passed in,
so the buckets are tested without a clock.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any

FLOOD_CLOSE_CODE = 4029  # like HTTP 429: too many requests
RATE_LIMITED = "rate_limited"


@dataclass
class TokenBucket:
    """``burst`` tokens at most, refilled at ``rate`` per second."""

    rate: float
    burst: float
    tokens: float
    updated: float

    @classmethod
    def full(cls, rate: float, burst: float, now: float) -> TokenBucket:
        return cls(rate, burst, burst, now)

    def take(self, now: float) -> bool:
        """Take one token if there is one."""
        self.tokens = min(self.burst, self.tokens + max(0.0, now - self.updated) * self.rate)
        self.updated = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


class FrameAction(Enum):
    ALLOW = "allow"
    REFUSE = "refuse"  # answer rate_limited, keep the connection
    CLOSE = "close"  # the client keeps flooding: disconnect


class FloodGuard:
    """One client's buckets; ``check`` says what to do with its next frame."""

    def __init__(self, settings: Any, now: float) -> None:
        self.frames = TokenBucket.full(settings.relay_frame_rate, settings.relay_frame_burst, now)
        self.explain = TokenBucket.full(settings.relay_explain_rate, settings.relay_explain_burst, now)
        self.strikes = TokenBucket.full(settings.relay_frame_rate, settings.relay_flood_strikes, now)
        self.refused = 0

    def check(self, now: float) -> FrameAction:
        """Every frame, before it is parsed."""
        return FrameAction.ALLOW if self.frames.take(now) else self.strike(now)

    def check_explain(self, now: float) -> FrameAction:
        """An ``explain_now`` that passed ``check``."""
        return FrameAction.ALLOW if self.explain.take(now) else self.strike(now)

    def strike(self, now: float) -> FrameAction:
        self.refused += 1
        return FrameAction.REFUSE if self.strikes.take(now) else FrameAction.CLOSE


def rate_limited_text(settings: Any, what: str) -> str:
    """The ``error`` message of a refused frame (``what``: ``frames`` or ``explain_now``)."""
    if what == "explain_now":
        rate, burst = settings.relay_explain_rate, settings.relay_explain_burst
    else:
        rate, burst = settings.relay_frame_rate, settings.relay_frame_burst
    return (
        f"too many {what}: at most {rate:g} per second ({burst} at once); this one was not carried "
        f"out, and a client that keeps sending faster is disconnected (code {FLOOD_CLOSE_CODE})"
    )
