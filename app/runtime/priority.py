"""The verdict path before the explanations, at the operating system's scheduler (issue 18, target 4).

The explainers are background work: when they are saturated, the broker and the scorer must
still get a core the moment a transaction arrives. Two levers, each measured by
``bench.isolation`` (windows alternating, one run):

- **Explainers at nice 10, or under ``SCHED_IDLE``** (:func:`yield_to_verdict_path`). A nice
  value only weighs the share of CPU; under Linux's EEVDF scheduler a woken nice-0 task may
  still wait for the running nice-10 task's slice to end, and the verdict path wakes at every
  hop (client → shim → noida-db → shim → scorer → …). A task of any normal policy that wakes
  preempts a ``SCHED_IDLE`` task at once; any user may lower its own policy. It is off by
  default: it did not buy isolation in the measurements (docs/performance.md), and it leaves
  the explainers only what every other process on the machine leaves.
- **Broker and scorer at a negative nice** (:func:`favour_verdict_path`), where the process may
  (root, or ``CAP_SYS_NICE``): a larger share of a contended core. Without the permission
  nothing changes and one line says so.

Linux applies both per thread, and a new thread inherits them from the thread that creates it:
these set every thread the process has (the parent watch of :mod:`app.runtime.lifetime` starts first),
from the main thread, before the role starts its own.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)


def _threads() -> list[int]:
    return [int(tid) for tid in os.listdir("/proc/self/task")] if os.path.isdir("/proc/self/task") else [0]


def yield_to_verdict_path(nice: int, sched_idle: bool) -> str:
    """Lower this process below the verdict path; returns what was applied (for the log)."""
    lowered = min(os.getpriority(os.PRIO_PROCESS, 0) + nice, 19)
    for tid in _threads():
        os.setpriority(os.PRIO_PROCESS, tid, lowered)
        if sched_idle:
            os.sched_setscheduler(tid, os.SCHED_IDLE, os.sched_param(0))
    return "SCHED_IDLE" if sched_idle else f"nice {lowered}"


def favour_verdict_path(role: str, nice: int) -> str:
    """Move this process to ``nice`` (≤ 0) if it runs above that and may; returns what holds."""
    current = os.getpriority(os.PRIO_PROCESS, 0)
    if nice >= current:
        return f"nice {current}"
    try:
        for tid in _threads():
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except PermissionError:
        log.info("%s: stays at nice %d (nice %d needs root or CAP_SYS_NICE)", role, current, nice)
        return f"nice {current}"
    return f"nice {nice}"
