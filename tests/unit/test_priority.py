"""The verdict path before the explanations at the OS scheduler (app/runtime/priority.py): each call runs
in a child process (the changes are per process and one-way for an unprivileged user), and what
the kernel reports afterwards is the oracle."""

from __future__ import annotations

import os
import subprocess
import sys

REPORT = "import os; print(os.getpriority(os.PRIO_PROCESS, 0), os.sched_getscheduler(0))"


def _child(call: str, drop_to_nobody: bool = False) -> tuple[str, int, int]:
    """Run ``call`` (from app.runtime.priority) in a fresh interpreter; its result and what the kernel
    says."""
    drop = "os.setuid(65534); " if drop_to_nobody else ""  # after the imports: nobody cannot read them
    code = f"import os; from app.runtime.priority import *; {drop}print(repr({call})); {REPORT}"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    said, kernel = run.stdout.strip().splitlines()
    nice, policy = (int(x) for x in kernel.split())
    return said, nice, policy


def test_an_explainer_under_sched_idle_is_preempted_by_any_normal_task() -> None:
    said, _, policy = _child("yield_to_verdict_path(10, True)")
    assert (said, policy) == ("'SCHED_IDLE'", os.SCHED_IDLE)


def test_an_explainer_without_sched_idle_keeps_the_normal_policy_at_its_nice() -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    said, nice, policy = _child("yield_to_verdict_path(10, False)")
    assert (nice, policy) == (min(base + 10, 19), os.SCHED_OTHER)
    assert said == f"'nice {nice}'"


def test_broker_and_scorer_take_the_verdict_path_nice_where_allowed() -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    allowed = os.geteuid() == 0  # CI runs as root; without it the next test's case applies
    said, nice, _ = _child("favour_verdict_path('scorer', -5)")
    assert (said, nice) == (("'nice -5'", -5) if allowed else (f"'nice {base}'", base))


def test_without_the_permission_nothing_changes_and_the_role_goes_on() -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    said, nice, _ = _child("favour_verdict_path('scorer', -5)", drop_to_nobody=os.geteuid() == 0)
    assert (said, nice) == (f"'nice {base}'", base)


def test_a_process_already_at_a_higher_priority_is_not_lowered() -> None:
    base = os.getpriority(os.PRIO_PROCESS, 0)
    said, nice, _ = _child(
        "os.nice(3) and favour_verdict_path('scorer', os.getpriority(os.PRIO_PROCESS, 0) + 2)"
    )
    assert (said, nice) == (f"'nice {base + 3}'", base + 3)
