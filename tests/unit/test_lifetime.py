"""No child outlives its parent, even a parent killed with SIGKILL (app/runtime/lifetime.py): the
parent-death signal armed between fork and exec (how the broker starts noida-db), and armed by
a Python child itself with the pidfd backstop (how `fraudlens up`'s children end with it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil

from tests.integration.harness import REPO, wait_until

# Parents that start one child as the code under test does; the child's pid comes on stdout.
PREEXEC_PARENT = """
import subprocess, sys, time
from app.runtime.lifetime import parent_death_signal
child = subprocess.Popen(["sleep", "300"], process_group=0, preexec_fn=parent_death_signal())
print(child.pid, flush=True)
time.sleep(300)
"""
PYTHON_PARENT = """
import subprocess, sys, time
from app.runtime.lifetime import child_env
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], env=child_env(), process_group=0)
time.sleep(300)  # the child prints its pid once it is ready
"""
# A child that ignores SIGTERM (as a worker stuck in its shutdown would): only the backstop ends it.
STUBBORN_CHILD = """
import os, signal, time
from app.runtime.lifetime import exit_with_parent
exit_with_parent(grace_s=1.0)
signal.signal(signal.SIGTERM, signal.SIG_IGN)
print(os.getpid(), flush=True)
time.sleep(300)
"""


def _gone(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _kill_parent_and_watch_child(script: str, *args: str) -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(script), *args], cwd=REPO, stdout=subprocess.PIPE
    )
    child = 0
    try:
        assert parent.stdout is not None
        child = int(parent.stdout.readline())
        assert not _gone(child)
        parent.kill()  # SIGKILL: no cleanup of its own can run
        parent.wait(10)
        wait_until(lambda: _gone(child), 15, f"child {child} to end with its parent")
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
        if child and not _gone(child):
            os.kill(child, signal.SIGKILL)


def test_a_binary_started_with_the_preexec_fn_ends_with_its_parent() -> None:
    _kill_parent_and_watch_child(PREEXEC_PARENT)


def test_a_python_child_that_ignores_sigterm_ends_by_the_backstop() -> None:
    _kill_parent_and_watch_child(PYTHON_PARENT, textwrap.dedent(STUBBORN_CHILD))


def test_a_child_whose_parent_is_already_gone_does_not_start(tmp_path: Path) -> None:
    script = "from app.runtime.lifetime import exit_with_parent; exit_with_parent(); print('started')"
    env = {**os.environ, "FRAUDLENS_PARENT_PID": "1"}  # not our parent: it "ended" before we armed
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, env=env, capture_output=True, text=True)
    assert done.returncode != 0 and "started" not in done.stdout
    assert "parent process 1 has ended; not starting" in done.stderr
