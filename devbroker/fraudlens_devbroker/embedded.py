"""The embedded development broker: noida-db as a child process behind the shim.

``python -m fraudlens_devbroker`` runs :func:`serve` (``fraudlens broker`` execs it; see
``__main__``). It knows nothing of fraudlens: the topics to create and the ones retention trims
only by time come on its command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import random
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NoReturn

from app.kafka.admin import create_missing
from app.runtime.lifetime import parent_death_signal, stop_process
from fraudlens_devbroker.datadir import (
    DataDirBusy,
    DataDirLock,
    Owner,
    leftover_noida,
    noida_users,
    process_started,
    stop_leftover,
)
from fraudlens_devbroker.shim import BrokerShim

log = logging.getLogger(__name__)

DEFAULT_FETCH_COALESCE_MS = 50.0  # measured: docs/cost.md, lever 1


@dataclass(frozen=True)
class Topics:
    """The users' topics: created at start (a topic auto-created by a client's first write gets
    one partition), and those retention trims only by time (users read them: a group that joins
    later must still find them; see :mod:`fraudlens_devbroker.retention`)."""

    create: tuple[str, ...] = ()
    partitions: int = 1
    replication_factor: int = 1
    time_retention_only: frozenset[str] = frozenset()


def noida_binary() -> Path:
    """The noida-db executable shipped inside the ``noida-db`` wheel."""
    import noida_db

    binary = Path(noida_db.__file__).with_name("noida-db")
    if not binary.exists():
        raise FileNotFoundError(f"noida-db binary missing at {binary}; reinstall the noida-db package")
    return binary


def free_port(host: str = "127.0.0.1") -> int:
    """A port nothing listens on, outside the kernel's ephemeral range.

    A port the kernel hands out itself (bind to 0) is an ephemeral one: once its listener stops
    (a broker restarted on the same port), a client reconnecting to it can be given that very
    port as its own source port and connect to itself (TCP simultaneous open), or any outgoing
    connection can take it: the restarted listener then fails with "address already in use"
    (seen: a clean-clone ``make test``, 2026-12-06, test_broker_killed_while_roles_start)."""
    low, high = _ephemeral_range()
    candidates = [p for p in range(10_000, 32_768) if not low <= p <= high] or list(range(1024, low))
    for port in random.sample(candidates, k=min(200, len(candidates))):
        with socket.socket() as sock:
            try:
                sock.bind((host, port))
            except OSError:
                continue
            return port
    raise OSError(f"no free port below the ephemeral range {low}-{high} on {host}")


def _ephemeral_range() -> tuple[int, int]:
    try:
        low, high = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()
        return int(low), int(high)
    except (OSError, ValueError):
        return 32_768, 60_999  # Linux's default


def wait_for_port(
    host: str, port: int, timeout: float, process: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait until something accepts TCP connections on (host, port)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"broker process exited with code {process.returncode}")
        with contextlib.suppress(OSError), socket.create_connection((host, port), timeout=0.5):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing answered on {host}:{port} within {timeout:.0f} s")


def start_noida(data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    data_dir.mkdir(parents=True, exist_ok=True)
    command = [
        str(noida_binary()), "start", "--only", "kafka",
        "--kafka-port", str(port), "--data-dir", str(data_dir),
    ]  # fmt: skip
    log_file = open(data_dir / "noida.log", "ab")  # noqa: SIM115 - owned by the child
    # Its own process group: a Ctrl-C in the terminal reaches us, and we stop the child in order.
    # Not its own session: with Linux's scheduler autogroups (one per session, on by default)
    # the broker would compete with all of our processes as an equal group, and the explainers'
    # nice would no longer yield to it (measured: verdict p50 with explainers busy 0.5-0.8 s in
    # a session of its own, 30-43 ms in ours; README → Performance). Out of our group, it would
    # outlive a SIGKILL of us: the kernel sends it SIGTERM when we end (app/runtime/lifetime.py). Started
    # from the main thread, before any other thread exists (the signal follows the forking thread).
    return subprocess.Popen(
        command, stdout=log_file, stderr=log_file, process_group=0, preexec_fn=parent_death_signal()
    )


async def wait_for_metadata(host: str, port: int, timeout: float) -> None:
    """Wait until the broker answers a Metadata request (not just a TCP connect)."""
    from aiokafka.client import AIOKafkaClient

    deadline = time.monotonic() + timeout
    while True:
        client = AIOKafkaClient(bootstrap_servers=f"{host}:{port}", request_timeout_ms=2000)
        try:
            await client.bootstrap()
            return
        except Exception:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.1)
        finally:
            await client.close()


class BrokerStartError(RuntimeError):
    """The broker cannot start; the message is the one line to show (no traceback)."""


async def serve(
    port: int,
    data_dir: Path,
    host: str = "127.0.0.1",
    ready_file: Path | None = None,
    max_retention_s: float = 60.0,
    fetch_coalesce_ms: float = DEFAULT_FETCH_COALESCE_MS,
    topics: Topics | None = None,
) -> NoReturn:
    """Run noida-db + shim until SIGINT/SIGTERM/SIGHUP, then end the process (``os._exit``: 0,
    or 1 if noida-db died) once everything is cleaned up; for a process of its own. Raises
    BrokerStartError when the data directory is taken or noida-db does not start.
    ``fetch_coalesce_ms``: the shim's window for background fetches (``BrokerShim``); ``topics``:
    what to create at start and what retention trims only by time (:class:`Topics`)."""
    topics = topics or Topics()
    data_dir = data_dir.resolve()
    lock = DataDirLock(data_dir)
    try:
        _reclaim(lock.acquire(), data_dir / "noida")
    except DataDirBusy as exc:
        raise BrokerStartError(str(exc)) from None
    upstream_port = free_port(host)
    noida = start_noida(data_dir / "noida", upstream_port)
    lock.record(Owner(os.getpid(), process_started(os.getpid()), noida.pid, process_started(noida.pid)))
    shim = BrokerShim(
        upstream=(host, upstream_port), listen=(host, port), fetch_coalesce_ms=fetch_coalesce_ms
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):  # SIGHUP: a closed terminal
        loop.add_signal_handler(signum, stop.set)
    try:
        await _noida_ready(host, upstream_port, noida, data_dir / "noida")
        await shim.start()
        await wait_for_metadata(host, port, 30)
        await asyncio.to_thread(_create_topics, f"{host}:{port}", topics)
        log.info(
            "broker ready on %s:%s (noida-db pid %s, data in %s, background fetches coalesced %g ms)",
            host, port, noida.pid, data_dir, fetch_coalesce_ms,
        )  # fmt: skip
        if ready_file is not None:
            ready_file.write_text(f"{host}:{port}\n")
        retention = asyncio.create_task(
            _retention_loop(f"{host}:{upstream_port}", max_retention_s, topics.time_retention_only)
        )
        try:
            code = await _supervise(noida, stop)
        finally:
            retention.cancel()
    finally:
        # each step logged: a stop that hangs says where (seen once in a full make test, not alone)
        log.info("stopping: closing the shim")
        await shim.close()
        log.info("stopping: shim closed; stopping noida-db pid %s", noida.pid)
        stop_process(noida)
        lock.release()
        log.info("stopped: noida-db ended (code %s), data dir released", noida.returncode)
    # Nothing is left to clean up (the shim is closed, noida-db ended, the lock released): end
    # now, whatever the code. Returning would let asyncio.run cancel the retention task and join
    # its thread, which may be blocked in librdkafka calls against the noida-db just stopped (or
    # dead) for their timeouts: a broker took over 10 s to end after a noida-db death (the fault
    # suite's orphan check), and under `up` a broker that logged "stopped" was still there 15 s
    # and 120 s later in two full clean-clone `make test` runs (test_up: closed-stdout, ctrl-c).
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _reclaim(previous: Owner | None, noida_dir: Path) -> None:
    """The lock is ours, so its previous owner is gone; its noida-db may not be."""
    leftover = leftover_noida(previous, noida_dir)
    if leftover is not None and previous is not None:
        log.warning(
            "stopping noida-db pid %s, left running on %s by broker pid %s (no longer running)",
            leftover.pid, noida_dir, previous.pid,
        )  # fmt: skip
        stop_leftover(leftover)


async def _noida_ready(host: str, port: int, noida: subprocess.Popen[bytes], noida_dir: Path) -> None:
    try:
        await asyncio.to_thread(wait_for_port, host, port, 30, noida)
    except RuntimeError:
        others = [pid for pid in noida_users(noida_dir) if pid != noida.pid]
        held = f"; noida-db pid {', '.join(map(str, others))} holds that directory" if others else ""
        where = noida_dir / "noida.log"
        raise BrokerStartError(
            f"noida-db exited with code {noida.returncode} at start (its log: {where}){held}"
        ) from None


def _create_topics(bootstrap: str, topics: Topics) -> None:
    """Create those of ``topics.create`` that do not exist (PLAINTEXT, once: the broker answered
    Metadata already); an existing topic is left as it is."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    created = create_missing(admin, tuple(topics.create), topics.partitions, topics.replication_factor)
    if created:
        log.info("created topics %s", ", ".join(created))


async def _retention_loop(
    bootstrap: str, max_retention_s: float, time_retention_only: frozenset[str], interval_s: float = 5.0
) -> None:
    from fraudlens_devbroker.retention import RetentionTask

    task = await asyncio.to_thread(
        RetentionTask, bootstrap, max_retention_s, time_retention_only=time_retention_only
    )
    try:
        while True:
            await asyncio.sleep(interval_s)
            try:
                deleted = await asyncio.to_thread(task.run_once)
                if deleted:
                    log.debug("retention deleted %d records", deleted)
            except Exception as exc:  # never let housekeeping stop the broker
                log.warning("retention pass failed: %s", exc)
    finally:
        await asyncio.to_thread(task.close)


async def _supervise(noida: subprocess.Popen[bytes], stop: asyncio.Event) -> int:
    while not stop.is_set():
        if noida.poll() is not None:
            log.error("noida-db exited unexpectedly with code %s", noida.returncode)
            return 1
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(stop.wait(), 0.5)
    return 0
