"""No process outlives its parent: the broker's half of it (a copy of fraudlens's ``app/runtime/lifetime.py``,
so that this package imports nothing of the product; the two speak through one variable).

- :func:`parent_death_signal` is the ``preexec_fn`` the broker starts noida-db with: Linux's
  parent-death signal armed between fork and exec (kept across exec, so it works for a binary we
  do not control), with a check that the parent had not already ended before it was armed.
- :func:`exit_with_parent` ties this process to the parent named in ``FRAUDLENS_PARENT_PID``
  (``fraudlens up`` and the test harness set it): the parent-death SIGTERM starts the orderly
  stop, and a thread watching the parent's pidfd sends SIGKILL ``grace_s`` later. ``fraudlens
  broker`` execs this package in its own process, which drops that thread, so it hands the
  variable on and the thread is started again here.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import sys
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_PID_ENV = "FRAUDLENS_PARENT_PID"  # the same name as fraudlens's app.runtime.lifetime
ORPHAN_GRACE_S = 5.0  # as fraudlens's: every child of `fraudlens up` gone ~5 s after it


def _prctl() -> Callable[..., int] | None:
    if not sys.platform.startswith("linux"):
        return None
    return ctypes.CDLL(None, use_errno=True).prctl  # type: ignore[no-any-return]


def parent_death_signal(signum: int = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` that makes the kernel send ``signum`` to the child when this process ends
    (None where the OS has no such mechanism). What it needs is looked up here, before the fork:
    between fork and exec the child only makes system calls."""
    prctl = _prctl()
    if prctl is None:
        return None
    parent = os.getpid()

    def arm() -> None:
        if prctl(PR_SET_PDEATHSIG, int(signum), 0, 0, 0) != 0:
            os._exit(127)  # a child we could not tie to us must not start at all
        if os.getppid() != parent:  # the parent ended before prctl: nobody will signal us
            os.kill(os.getpid(), signum)

    return arm


def exit_with_parent(grace_s: float = ORPHAN_GRACE_S) -> None:
    """If ``FRAUDLENS_PARENT_PID`` is set, end this process when that parent ends: SIGTERM from
    the kernel (our orderly stop), SIGKILL ``grace_s`` later. The variable is removed so that
    our own children do not take it for theirs."""
    value = os.environ.pop(PARENT_PID_ENV, None)
    if not value:
        return
    parent = int(value)
    prctl = _prctl()
    if prctl is not None and prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0) != 0:
        raise SystemExit(f"cannot arm the parent-death signal (errno {ctypes.get_errno()})")
    if os.getppid() != parent:  # it ended before we armed the signal
        raise SystemExit(f"parent process {parent} has ended; not starting")
    try:
        pidfd = os.pidfd_open(parent)
    except (AttributeError, OSError) as exc:  # no pidfd: the parent-death signal alone applies
        log.debug("no pidfd for parent %s (%s)", parent, exc)
        return
    threading.Thread(target=_watch, args=(pidfd, parent, grace_s), name="parent-watch", daemon=True).start()


def _watch(pidfd: int, parent: int, grace_s: float) -> None:
    select.select([pidfd], [], [])  # readable once the parent has ended
    log.warning("parent process %s ended; stopping (killed in %.0f s if still running)", parent, grace_s)
    threading.Event().wait(grace_s)
    os.kill(os.getpid(), signal.SIGKILL)
