"""`fraudlens produce` stops on SIGINT/SIGTERM/SIGHUP, never between producing a message and
counting it (that made "acked" exceed "sent": exit 1 after a clean stop)."""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator

import pytest

from app.cli.produce import _StopSignals


@pytest.fixture
def handlers() -> Iterator[None]:
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    yield
    for signum, handler in saved.items():
        signal.signal(signum, handler)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_a_stop_inside_the_critical_section_waits_for_its_end(handlers: None, signum: int) -> None:
    signals = _StopSignals()
    counted = 0
    with pytest.raises(KeyboardInterrupt), signals.deferred():
        os.kill(os.getpid(), signum)  # the handler runs here, before the count
        counted += 1
    assert counted == 1


def test_a_stop_outside_it_is_at_once(handlers: None) -> None:
    _StopSignals()
    with pytest.raises(KeyboardInterrupt):
        os.kill(os.getpid(), signal.SIGTERM)  # the handler raises at the next bytecode
