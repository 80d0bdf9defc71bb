"""No process outlives its parent, however the parent ends (SIGKILL included).

Two mechanisms of the operating system, neither of which needs the parent to be alive:

- Linux's parent-death signal (``prctl(PR_SET_PDEATHSIG)``): the kernel sends the child a signal
  when its parent ends. It fires when the parent *thread* that forked the child ends, so parents
  start children from their main thread. If the parent died before the child armed it, no
  signal comes: the child then checks ``getppid()`` against the parent's pid.
  :func:`parent_death_signal` arms it between fork and exec (kept across exec, so it works for a
  binary we do not control, noida-db); :func:`exit_with_parent` arms it in our own Python
  children, at the very start of ``fraudlens`` (the parent names itself in
  ``FRAUDLENS_PARENT_PID``), so that a parent with threads (``fraudlens up``'s Kafka consumer)
  never needs a ``preexec_fn``.
- A pidfd of the parent (readable once the parent has ended), watched by a thread of the child:
  ``grace_s`` after the parent-death SIGTERM started its orderly stop, the child ends with
  SIGKILL. A worker whose shutdown waits on a broker that went down with the parent must not
  linger.
"""

from __future__ import annotations

import ctypes
import logging
import os
import select
import signal
import subprocess
import sys
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>
PARENT_PID_ENV = "FRAUDLENS_PARENT_PID"
# Parent-death SIGTERM → SIGKILL. The scorer gives up its partitions ~1.5 s after the SIGTERM,
# then it and the explainer wait on the broker that stopped beside them until this backstop
# (measured); 5 s keeps every child gone well inside test_up's 15 s.
ORPHAN_GRACE_S = 5.0


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


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a Python child that must end with this process (see exit_with_parent)."""
    return {**os.environ, **extra, PARENT_PID_ENV: str(os.getpid())}


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
    # The parent-death SIGTERM has started our orderly stop; a second SIGTERM here could cut it
    # short (the producer's flush), so this is only the backstop.
    log.warning("parent process %s ended; stopping (killed in %.0f s if still running)", parent, grace_s)
    threading.Event().wait(grace_s)
    os.kill(os.getpid(), signal.SIGKILL)


def stop_process(process: subprocess.Popen[bytes], timeout: float = 15) -> None:
    """SIGTERM, then SIGKILL if it still runs after ``timeout``; waits for it either way."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
