"""Consumer-group session bookkeeping for the broker shim.

noida-db never expires a group member whose process died, so its partitions stay assigned to a
ghost and every later rebalance waits for it forever. The shim sees every group request pass by,
so it keeps the session clock a real Kafka coordinator keeps, and evicts (LeaveGroup v3 on the
member's behalf) whoever has not been heard from within its own session timeout.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

DEFAULT_SESSION_TIMEOUT_S = 10.0


@dataclass
class Member:
    group_id: str
    member_id: str
    instance_id: str | None
    session_timeout_s: float
    last_seen: float
    in_flight: int = 0  # a JoinGroup/SyncGroup the coordinator is holding proves it alive


@dataclass
class GroupSessions:
    members: dict[tuple[str, str], Member] = field(default_factory=dict)

    def joined(
        self,
        group_id: str,
        member_id: str,
        instance_id: str | None,
        session_timeout_ms: int | None,
        now: float | None = None,
    ) -> None:
        """A JoinGroup response assigned ``member_id``; a restarted static member replaces its
        predecessor, which must not be evicted in its name."""
        now = time.monotonic() if now is None else now
        if instance_id is not None:
            for key, other in list(self.members.items()):
                same = other.group_id == group_id and other.instance_id == instance_id
                if same and other.member_id != member_id:
                    del self.members[key]
        timeout = (session_timeout_ms or DEFAULT_SESSION_TIMEOUT_S * 1000) / 1000
        member = self.members.get((group_id, member_id))
        if member is None:
            member = Member(group_id, member_id, instance_id, timeout, now)
            self.members[(group_id, member_id)] = member
        member.session_timeout_s, member.last_seen = timeout, now

    def seen(self, group_id: str, member_id: str, now: float | None = None) -> None:
        member = self.members.get((group_id, member_id))
        if member is not None:
            member.last_seen = time.monotonic() if now is None else now

    def request_started(self, group_id: str, member_id: str) -> None:
        member = self.members.get((group_id, member_id))
        if member is not None:
            member.in_flight += 1

    def request_finished(self, group_id: str, member_id: str, now: float | None = None) -> None:
        member = self.members.get((group_id, member_id))
        if member is not None:
            member.in_flight = max(0, member.in_flight - 1)
            member.last_seen = time.monotonic() if now is None else now

    def left(self, group_id: str, member_id: str) -> None:
        self.members.pop((group_id, member_id), None)

    def expired(self, now: float | None = None) -> list[Member]:
        """Members silent for longer than their session timeout; they are forgotten here."""
        now = time.monotonic() if now is None else now
        dead = [
            m for m in self.members.values() if m.in_flight == 0 and now - m.last_seen > m.session_timeout_s
        ]
        for member in dead:
            del self.members[(member.group_id, member.member_id)]
        return dead
