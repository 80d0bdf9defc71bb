"""Whether the relay's feed is live: can its consumer read every partition it is assigned?

Decided from librdkafka's own statistics (``statistics.interval.ms``, every second), which cover
both ways a broker goes away:

- killed or stopped: its connection is down, and librdkafka soon forgets the partitions' leader
  (state not ``UP``, leader -1);
- frozen (SIGSTOP, a stalled disk, a network partition): the connection stays ``UP`` but a request
  is outstanding (``waitresp_cnt`` > 0) with nothing received for ``stall_s`` (``rxidle``). The
  consumer always has a fetch outstanding, answered at least every ``fetch.wait.max.ms``, so a
  silence of seconds is a broker that does not answer, not a quiet topic. (A consumer whose
  local queue is full sends no fetch: no request outstanding, so no false alarm.)

Error callbacks (``_ALL_BROKERS_DOWN``, ``_TRANSPORT``) only say that something failed once; they
never say that the broker is back, so they are not used for the state. A problem counts once it
lasts ``grace_s`` (a dropped connection that librdkafka re-opens at once is not an outage).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


def feed_problem(stats: Mapping[str, Any], topics: tuple[str, ...], stall_s: float) -> str | None:
    """Why the consumer cannot read all of its partitions now, or None when it can."""
    brokers = {b.get("nodeid"): b for b in stats.get("brokers", {}).values() if b.get("nodeid", -1) >= 0}
    leaders: set[int] = set()
    for topic in topics:
        for partition, state in stats.get("topics", {}).get(topic, {}).get("partitions", {}).items():
            if partition == "-1" or not state.get("desired"):
                continue
            if state.get("leader", -1) < 0:
                return f"no broker leads {topic} [{partition}] (brokers unreachable)"
            leaders.add(state["leader"])
    for leader in sorted(leaders):
        broker = brokers.get(leader)
        if broker is None:
            return f"broker {leader} is unknown"
        name = broker.get("nodename") or broker.get("name") or str(leader)
        if broker.get("state") != "UP":
            return f"broker {name} is {broker.get('state', 'unknown').lower()}"
        silent_s = broker.get("rxidle", -1) / 1e6
        if broker.get("waitresp_cnt", 0) > 0 and silent_s > stall_s:
            return f"broker {name} has not answered for {silent_s:.0f} s"
    return None


@dataclass
class FeedChange:
    """The feed went down (``interrupted``) or came back (``resumed``); times are epoch seconds."""

    state: str  # interrupted | resumed
    since: float  # when the problem was first seen
    at: float  # when this change was decided
    reason: str


class FeedWatch:
    """Turns one problem-or-None per statistics tick into interrupted/resumed changes."""

    def __init__(self, grace_s: float = 1.5) -> None:
        self.grace_s = grace_s
        self.problem_since: float | None = None
        self.interrupted = False

    def observe(self, problem: str | None, now: float) -> FeedChange | None:
        if problem is None:
            since, self.problem_since = self.problem_since, None
            if self.interrupted and since is not None:
                self.interrupted = False
                return FeedChange("resumed", since, now, "")
            return None
        if self.problem_since is None:
            self.problem_since = now
        if not self.interrupted and now - self.problem_since >= self.grace_s:
            self.interrupted = True
            return FeedChange("interrupted", self.problem_since, now, problem)
        return None
