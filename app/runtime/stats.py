"""Where a role's batches spend their time, for its periodic stats line.

The scorer and the explainer's router each log one line every few seconds while work flows:
how many events in how many batches, and the milliseconds per batch of each stage. Both count
into a :class:`BatchTimings`; the explainer's compute task has its own line (counts by status and
priority, ``app.explainer.workers``).
"""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable


class BatchTimings:
    """Events, batches and seconds per stage since the last line (``line`` starts a new window)."""

    def __init__(self, every_s: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.every_s, self.clock = every_s, clock
        self._window()

    def _window(self) -> None:
        self.since = self.clock()
        self.batches = self.events = 0
        self.seconds: defaultdict[str, float] = defaultdict(float)

    def add(self, events: int, **seconds: float) -> None:
        """One batch of ``events``, with the seconds each named stage took."""
        self.batches += 1
        self.events += events
        for stage, spent in seconds.items():
            self.seconds[stage] += spent

    def due(self) -> bool:
        return self.clock() - self.since >= self.every_s

    def line(self) -> str:
        """The window's figures, then a new window."""
        if not self.batches:
            text = f"no batches in {self.clock() - self.since:.0f} s"
        else:
            stages = sorted(self.seconds.items())
            per_batch = ", ".join(f"{stage} {1e3 * spent / self.batches:.1f}" for stage, spent in stages)
            per_event = ", ".join(f"{stage} {1e6 * spent / self.events:.0f}" for stage, spent in stages)
            text = (
                f"{self.events} events in {self.batches} batches (mean {self.events / self.batches:.1f}) "
                f"over {self.clock() - self.since:.0f} s; ms/batch: {per_batch}; µs/event: {per_event}"
            )
        self._window()
        return text
