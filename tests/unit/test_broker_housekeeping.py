"""The embedded broker's housekeeping never holds up its exit."""

from __future__ import annotations

import asyncio
import threading
import time

import pytest

from app.broker.embedded import _in_daemon_thread


def test_a_blocked_housekeeping_call_does_not_hold_up_the_exit() -> None:
    """A retention pass blocked in a librdkafka call (noida-db gone: 5-10 s timeouts each) must
    not keep the broker process alive once its loop ends: ``asyncio.to_thread`` joins its thread
    at the loop's shutdown, for the whole of the call."""
    release = threading.Event()

    async def broker() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(_in_daemon_thread(lambda: release.wait(30)), 0.1)

    began = time.monotonic()
    asyncio.run(broker())
    took = time.monotonic() - began
    release.set()
    assert took < 5, f"the loop's end waited {took:.1f} s for the blocked call"


def test_results_and_errors_reach_the_awaiting_task() -> None:
    async def main() -> tuple[int, str]:
        value = await _in_daemon_thread(lambda: 41 + 1)
        try:
            await _in_daemon_thread(lambda: 1 // 0)
        except ZeroDivisionError as exc:
            return value, type(exc).__name__
        return value, "no error"

    assert asyncio.run(main()) == (42, "ZeroDivisionError")
