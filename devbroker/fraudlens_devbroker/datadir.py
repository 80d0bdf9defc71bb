"""One ``fraudlens broker`` per data directory, and proof of whose leftover a noida-db is.

``<data dir>/broker.lock`` holds an exclusive ``flock`` for the broker's lifetime (the kernel
releases it when the process ends, however it ends) and a JSON record of the owner: its pid and
start time, and those of its noida-db. A broker that cannot take the lock is refused, naming the
live owner. One that takes it reads the previous record: the owner is gone (the lock proves it),
so a noida-db still running under the recorded pid *and* start time, with this data directory on
its command line, is that owner's leftover, and is stopped. A pid that was reused by some other
process since is left alone.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import signal
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import orjson
import psutil

log = logging.getLogger(__name__)

LOCK_FILE = "broker.lock"


class DataDirBusy(RuntimeError):
    """The data directory is in use; the message is the one line to show."""


@dataclass(frozen=True)
class Owner:
    pid: int
    started: float  # psutil create_time: with the pid, names one process for good
    noida_pid: int | None = None
    noida_started: float | None = None


def process_started(pid: int) -> float:
    return float(psutil.Process(pid).create_time())


class DataDirLock:
    """Held from :meth:`acquire` until the process ends (or :meth:`release`)."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> Owner | None:
        """Take the lock; returns the previous (dead) owner's record, if any. Raises DataDirBusy
        when a live broker holds the directory."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _parse(os.read(fd, 4096))
            os.close(fd)
            who = f"pid {owner.pid}" if owner else "another process"
            raise DataDirBusy(f"{self.path.parent} is in use by a running broker ({who})") from None
        self._fd = fd
        return _parse(os.pread(fd, 4096, 0))

    def record(self, owner: Owner) -> None:
        assert self._fd is not None, "record() before acquire()"
        data = orjson.dumps(asdict(owner))
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing the last descriptor drops the flock
            self._fd = None


def _parse(data: bytes) -> Owner | None:
    try:
        return Owner(**orjson.loads(data))
    except (orjson.JSONDecodeError, TypeError):
        return None


def leftover_noida(owner: Owner | None, noida_dir: Path) -> psutil.Process | None:
    """The dead owner's noida-db if it still runs: same pid, same start time, and our data
    directory on its command line (else the pid now belongs to something else)."""
    if owner is None or owner.noida_pid is None or owner.noida_started is None:
        return None
    try:
        process = psutil.Process(owner.noida_pid)
        same = abs(process.create_time() - owner.noida_started) < 0.01
        command = process.cmdline()
    except psutil.Error:
        return None
    if same and command and Path(command[0]).name == "noida-db" and str(noida_dir) in command:
        return process
    return None


def stop_leftover(process: psutil.Process, timeout: float = 10) -> signal.Signals:
    """SIGTERM (noida-db keeps its data on it), SIGKILL if it still runs after ``timeout``;
    returns the signal that ended it."""
    for signum in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(psutil.NoSuchProcess):
            process.send_signal(signum)
            process.resume()  # a stopped process would keep a SIGTERM it handles pending
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if _ended(process):
                return signum
            time.sleep(0.05)
    raise RuntimeError(f"pid {process.pid} did not end on SIGKILL")


def _ended(process: psutil.Process) -> bool:
    """Gone, or a zombie: an orphan's new parent (here PID 1) need not reap it at once."""
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def noida_users(noida_dir: Path) -> list[int]:
    """Pids of noida-db processes started on this directory (for a refusal that names them)."""
    found = []
    for process in psutil.process_iter(["pid", "cmdline"]):
        command = process.info["cmdline"] or []
        if command and Path(command[0]).name == "noida-db" and str(noida_dir) in command:
            found.append(int(process.info["pid"]))
    return found
