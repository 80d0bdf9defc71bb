"""`fraudlens broker` and its noida-db child: the child never outlives the broker (a SIGKILL of
the broker included) and a broker started again on the directory serves what was acked; one
broker per data directory (a second is refused with one line naming the running one's pid); a
noida-db left holding the directory by a broker that died is reclaimed when the lock record
proves whose it is, and named (not killed) when nothing does."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import orjson
import psutil

from fraudlens_devbroker.embedded import noida_binary, wait_for_port
from tests.integration.harness import REPO, Stack, TopicReader, free_port, wait_until


def _gone(process: psutil.Process) -> bool:
    try:
        return not process.is_running() or process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_sigkill_of_the_broker_ends_its_noida(tmp_path: Path, models_dir: Path) -> None:
    stack = Stack(root=tmp_path, models_dir=models_dir)
    try:
        broker = stack.start_broker()
        noida = stack.noida()
        broker.popen.kill()  # SIGKILL: `fraudlens broker` runs no cleanup of its own
        broker.popen.wait(10)
        wait_until(lambda: _gone(noida), 15, f"noida-db pid {noida.pid} to end with its broker")
    finally:
        stack.stop_all()
        if not _gone(noida):
            noida.kill()


def test_a_broker_started_again_after_a_sigkill_serves_what_was_acked(
    tmp_path: Path, models_dir: Path
) -> None:
    """Issue 23's run: SIGKILL of `fraudlens broker`, then `fraudlens broker` again on the same
    data directory (it died with a traceback while the first one's noida-db held it)."""
    stack = Stack(root=tmp_path, models_dir=models_dir)
    try:
        first = stack.start_broker()
        stack.produce([(b"k", b"acked before the kill")], topic="verdicts")
        first.popen.kill()
        first.popen.wait(10)
        stack.start_broker()  # same port, same data dir
        reader = TopicReader(stack.bootstrap, "verdicts")
        try:
            values = [m.value() for m in reader.read_until(lambda m: len(m) >= 1, 60, "the acked record")]
        finally:
            reader.close()
        assert values == [b"acked before the kill"]
    finally:
        stack.stop_all()


def _lone_noida(noida_dir: Path) -> subprocess.Popen[bytes]:
    """A noida-db holding ``noida_dir`` with no broker above it: what a broker killed before
    this fix left behind (nothing ties it to a parent)."""
    noida_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    command = [
        str(noida_binary()),
        "start",
        "--only",
        "kafka",
        "--kafka-port",
        str(port),
        "--data-dir",
        str(noida_dir),
    ]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, process_group=0)
    wait_for_port("127.0.0.1", port, 30, process)
    return process


def _dead_pid() -> int:
    finished = subprocess.Popen(["true"])
    finished.wait()
    return finished.pid


def test_a_broker_reclaims_a_directory_its_dead_predecessor_left_to_noida(
    tmp_path: Path, models_dir: Path
) -> None:
    stack = Stack(root=tmp_path, models_dir=models_dir)
    directory = tmp_path / "data" / "broker"
    leftover = _lone_noida(directory / "noida")
    try:
        dead = _dead_pid()
        owner = {"pid": dead, "started": 1.0, "noida_pid": leftover.pid,
                 "noida_started": psutil.Process(leftover.pid).create_time()}  # fmt: skip
        (directory / "broker.lock").write_bytes(orjson.dumps(owner))
        broker = stack.start_broker(directory)  # fails unless it reclaims the directory
        assert leftover.wait(15) is not None
        assert f"stopping noida-db pid {leftover.pid}" in broker.tail(200)
        assert f"by broker pid {dead} (no longer running)" in broker.tail(200)
        stack.produce([(b"k", b"served")], topic="verdicts")
    finally:
        stack.stop_all()
        if leftover.poll() is None:
            leftover.kill()
            leftover.wait()


def test_a_noida_nobody_can_vouch_for_is_refused_in_one_line(tmp_path: Path, models_dir: Path) -> None:
    """No lock record names it, so it may be someone's: not killed, named."""
    stack = Stack(root=tmp_path, models_dir=models_dir)
    directory = tmp_path / "data" / "broker"
    stranger = _lone_noida(directory / "noida")
    try:
        refused = _run_broker(stack, directory)
        assert refused.returncode != 0 and "Traceback" not in refused.stderr, refused.stderr
        lines = [line for line in refused.stderr.splitlines() if "noida-db exited with code" in line]
        assert len(lines) == 1 and f"noida-db pid {stranger.pid} holds that directory" in lines[0], (
            refused.stderr
        )
        assert stranger.poll() is None
    finally:
        stack.stop_all()
        stranger.kill()
        stranger.wait()


def _run_broker(stack: Stack, directory: Path) -> subprocess.CompletedProcess[str]:
    command = [
        sys.executable, "-m", "app.cli.main", "broker",
        "--port", str(free_port()), "--data-dir", str(directory),
    ]  # fmt: skip
    return subprocess.run(command, cwd=REPO, env=stack.env(), capture_output=True, text=True, timeout=90)


def test_a_directory_held_by_a_live_broker_is_refused_in_one_line(tmp_path: Path, models_dir: Path) -> None:
    stack = Stack(root=tmp_path, models_dir=models_dir)
    try:
        first = stack.start_broker()
        command = [
            sys.executable, "-m", "app.cli.main", "broker", "--port", str(free_port()),
            "--data-dir", str(tmp_path / "data" / "broker"),
        ]  # fmt: skip
        second = subprocess.run(
            command, cwd=REPO, env=stack.env(), capture_output=True, text=True, timeout=60
        )
        assert second.returncode != 0
        assert "Traceback" not in second.stderr, second.stderr
        lines = [line for line in second.stderr.splitlines() if "in use by a running broker" in line]
        assert len(lines) == 1 and f"pid {first.pid}" in lines[0], second.stderr
        assert first.alive() and not _gone(stack.noida())  # the running broker is untouched
        stack.produce([(b"k", b"still served")], topic="verdicts")
    finally:
        stack.stop_all()


def test_sighup_stops_the_broker_in_order(tmp_path: Path, models_dir: Path) -> None:
    """A closed terminal: the broker stops noida-db itself (SIGTERM: it keeps its data) and exits 0."""
    stack = Stack(root=tmp_path, models_dir=models_dir)
    try:
        broker = stack.start_broker()
        noida = stack.noida()
        os.kill(broker.pid, signal.SIGHUP)
        assert broker.popen.wait(30) == 0, broker.tail()
        assert _gone(noida)
    finally:
        stack.stop_all()
