"""The broker's data-dir lock: a live owner refuses a second broker (naming its pid); a dead
owner's record is handed to the next one; a leftover noida-db is recognised by pid, start time
and command line, and nothing else is."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from fraudlens_devbroker.datadir import (
    DataDirBusy,
    DataDirLock,
    Owner,
    leftover_noida,
    process_started,
    stop_leftover,
)


def test_a_held_directory_is_refused_with_the_owners_pid(tmp_path: Path) -> None:
    first = DataDirLock(tmp_path)
    assert first.acquire() is None
    first.record(Owner(4242, 1.0))
    with pytest.raises(DataDirBusy, match="in use by a running broker \\(pid 4242\\)"):
        DataDirLock(tmp_path).acquire()  # flock: a second open file description, as in another process
    first.release()


def test_the_next_owner_gets_the_dead_owners_record(tmp_path: Path) -> None:
    first = DataDirLock(tmp_path)
    first.acquire()
    first.record(Owner(11, 2.5, 12, 3.5))
    first.release()  # what the kernel does when the owner dies
    second = DataDirLock(tmp_path)
    assert second.acquire() == Owner(11, 2.5, 12, 3.5)
    second.release()


def test_garbage_in_the_lock_file_is_no_record(tmp_path: Path) -> None:
    (tmp_path / "broker.lock").write_bytes(b"\x00not json")
    lock = DataDirLock(tmp_path)
    assert lock.acquire() is None
    lock.release()


def _fake_noida(tmp_path: Path, noida_dir: Path) -> subprocess.Popen[bytes]:
    """A process whose command line reads like noida-db's on ``noida_dir`` (it only sleeps)."""
    command = [str(tmp_path / "noida-db"), "-c", "import time; time.sleep(60)", "--data-dir", str(noida_dir)]
    return subprocess.Popen(command, executable=sys.executable)


def test_a_leftover_is_only_the_recorded_noida_on_this_directory(tmp_path: Path) -> None:
    noida_dir = tmp_path / "noida"
    process = _fake_noida(tmp_path, noida_dir)
    try:
        started = process_started(process.pid)
        me = Owner(os.getpid(), process_started(os.getpid()))
        found = leftover_noida(Owner(me.pid, me.started, process.pid, started), noida_dir)
        assert found is not None and found.pid == process.pid
        assert leftover_noida(Owner(me.pid, me.started, process.pid, started), tmp_path / "other") is None
        assert (
            leftover_noida(Owner(me.pid, me.started, process.pid, started - 5), noida_dir) is None
        )  # pid reused
        assert (
            leftover_noida(Owner(me.pid, me.started, os.getpid(), me.started), noida_dir) is None
        )  # not noida
        assert leftover_noida(Owner(me.pid, me.started), noida_dir) is None
        assert leftover_noida(None, noida_dir) is None
    finally:
        process.kill()
        process.wait()


def test_a_stopped_leftover_is_stopped_for_good(tmp_path: Path) -> None:
    process = _fake_noida(tmp_path, tmp_path / "noida")
    try:
        os.kill(process.pid, signal.SIGSTOP)  # a SIGTERM alone would stay pending
        # ended by the SIGTERM, not by the SIGKILL that follows the timeout
        assert stop_leftover(psutil.Process(process.pid), timeout=30) == signal.SIGTERM
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
