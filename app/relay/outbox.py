"""One client's bounded outgoing queue: a client that stops reading never slows the others.

The fan-out only ever calls ``offer``/``offer_many`` (never waits). When ``limit`` messages are
waiting the client is marked lagging: further offers are refused, and its writer sends the
``lagging`` notice and closes the connection. A snapshot or a replay is one entry (a list of
frames), so catching up a reconnecting client is bounded by the replay buffer, not by the live
limit. The writer takes everything queued at once (``take``), so a client that fell behind by
twenty events gets them in one socket write, not twenty.
"""

from __future__ import annotations

import asyncio
from collections import deque

Entry = bytes | list[bytes]


class Outbox:
    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.entries: deque[Entry] = deque()
        self.lagging = False
        self.closed = False
        self._ready = asyncio.Event()
        self._taken = asyncio.Event()

    def __len__(self) -> int:
        return len(self.entries)

    def offer(self, entry: Entry) -> bool:
        """Queue ``entry``; False (and lagging from now on) when the client is too far behind."""
        if self.lagging or self.closed:
            return False
        if len(self.entries) >= self.limit:
            self.lagging = True
            self._ready.set()  # wake the writer so it notices and disconnects
            return False
        self.entries.append(entry)
        self._ready.set()
        return True

    def offer_many(self, frames: list[bytes]) -> bool:
        """Queue each of ``frames`` (one fan-out step); False (lagging) when they do not all fit."""
        if self.lagging or self.closed:
            return False
        if len(self.entries) + len(frames) > self.limit:
            self.lagging = True
            self._ready.set()
            return False
        self.entries.extend(frames)
        self._ready.set()
        return True

    def close(self) -> None:
        self.closed = True
        self._ready.set()

    async def drained(self) -> None:
        """Until the writer has taken every queued entry (or stopped taking them)."""
        while self.entries and not (self.lagging or self.closed):
            self._taken.clear()
            await self._taken.wait()

    async def take(self) -> list[Entry] | None:
        """Every queued entry, in order, once there is one; None once lagging or closed."""
        while True:
            if self.lagging or self.closed:
                return None
            if self.entries:
                taken = list(self.entries)
                self.entries.clear()
                self._taken.set()
                return taken
            self._ready.clear()
            await self._ready.wait()
