"""When ``fraudlens up`` restarts a child that failed, and when it stops trying.

Like systemd's ``Restart=on-failure``: a child that ends with a non-zero code or by a signal is
started again after a delay that doubles with each failure in a row (``backoff_s``, 2×, 4×, …
up to ``max_backoff_s``). A run that lasted ``window_s`` or longer was healthy and starts the
count afresh. After ``limit`` restarts in a row, each of which failed within ``window_s`` of its
start, the child is given up. Pure logic: no processes, no clock of its own.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RestartPolicy:
    limit: int = 5
    window_s: float = 60.0
    backoff_s: float = 1.0
    max_backoff_s: float = 30.0


@dataclass
class RestartTracker:
    """One child's failures: ``failed`` says how long to wait before its next start, or None."""

    policy: RestartPolicy
    in_a_row: int = 0  # restarts since the last healthy run
    total: int = 0  # restarts since ``up`` started

    def failed(self, ran_s: float) -> float | None:
        if ran_s >= self.policy.window_s:
            self.in_a_row = 0
        if self.in_a_row >= self.policy.limit:
            return None
        self.in_a_row += 1
        self.total += 1
        delay = self.policy.backoff_s * 2 ** (self.in_a_row - 1)
        return float(min(delay, self.policy.max_backoff_s))


def is_failure(returncode: int) -> bool:
    """Non-zero exit or killed by a signal (negative code): restart. Exit 0 is a finished run."""
    return returncode != 0
