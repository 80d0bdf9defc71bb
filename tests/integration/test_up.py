"""`fraudlens up`: the whole stack as children, verdicts and explanations flowing, and however
`up` ends, no child left: SIGTERM, a terminal's Ctrl-C (SIGINT to the whole foreground process
group) or SIGHUP (a closed terminal) stop every child cleanly in order; a SIGKILL of `up` alone,
or its stdout reader gone before a Ctrl-C, leave no child either (the children's parent-death
signal), and the ports are free within 15 s. A child that fails is restarted; one that keeps
failing is given up with a message, and the stack stops."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import orjson
import psutil
import pytest

from app.model.generator import generate_transactions
from app.relay.tokens import create_token, load_or_create_secret
from tests.integration.harness import REPO, TopicReader, free_port, wait_until
from tests.integration.test_metrics import get, samples

ROLES = ("broker", "--role scorer", "--role explainer", "relay", "produce")


def _env(tmp_path: Path, models_dir: Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDLENS_")}
    env.update(
        FRAUDLENS_DATA_DIR=str(tmp_path / "data"),
        FRAUDLENS_MODELS_DIR=str(models_dir),
        FRAUDLENS_BROKER_PORT=str(free_port()),
        FRAUDLENS_RELAY_PORT=str(free_port()),
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


# `up` as a terminal starts it: SIGINT at its default. A test run started in the background by a
# shell without job control (`make test &`, `nohup make test &`) has SIGINT ignored, which every
# child inherits across exec, and an `up` started so rightly ignores Ctrl-C (Python installs its
# KeyboardInterrupt handler only over a default); the tests that send it reset it first.
UP = [
    sys.executable, "-c",
    "import os, signal, sys; signal.signal(signal.SIGINT, signal.SIG_DFL); "
    "os.execv(sys.executable, [sys.executable, '-m', 'app.cli.main', 'up', *sys.argv[1:]])",
]  # fmt: skip


def _start_up(env: dict[str, str], stdout: int | object, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*UP, *args], cwd=REPO, env=env,
        stdout=stdout, stderr=subprocess.STDOUT if stdout != subprocess.PIPE else None,
        start_new_session=True,
    )  # fmt: skip


def _stack_processes(data_dir: Path) -> list[psutil.Process]:
    """Every process of this stack, found by the data dir in its environment: an oracle that
    does not depend on `up` (a child re-parented after `up` died is still found)."""
    found = []
    for process in psutil.process_iter():
        try:
            if process.environ().get("FRAUDLENS_DATA_DIR") == str(data_dir) and not _dead(process):
                found.append(process)
        except psutil.Error:
            continue
    return found


def _dead(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def _listening(port: int) -> bool:
    return any(c.laddr.port == port and c.status == psutil.CONN_LISTEN for c in psutil.net_connections("tcp"))


def _kill_leftovers(up: subprocess.Popen[bytes], children: list[psutil.Process], data_dir: Path) -> None:
    """A failed run must not leave the stack behind: each process by its own PID."""
    if up.poll() is None:
        up.send_signal(signal.SIGTERM)
        try:
            up.wait(60)
        except subprocess.TimeoutExpired:
            up.kill()
            up.wait(30)
    for child in [*children, *_stack_processes(data_dir)]:
        if not _dead(child):
            child.kill()


def _roles_running(up: subprocess.Popen[bytes]) -> list[psutil.Process]:
    children = psutil.Process(up.pid).children(recursive=True)
    commands = [" ".join(c.cmdline()) for c in children]
    assert all(any(role in command for command in commands) for role in ROLES), commands
    return children


@pytest.mark.parametrize("stop", ["sigterm", "ctrl-c", "sighup"])
def test_up_runs_the_stack_and_stops_every_child_cleanly(tmp_path: Path, models_dir: Path, stop: str) -> None:
    env = _env(tmp_path, models_dir)
    output = tmp_path / "up.out"
    with output.open("wb") as out:
        up = _start_up(env, out, "--explainers", "2", "--rate", "40")
    children: list[psutil.Process] = []
    try:

        def explained() -> bool:
            totals = re.findall(r"explained/s +\d+ \(total (\d+)\)", output.read_text(errors="replace"))
            return bool(totals) and int(totals[-1]) > 0

        wait_until(explained, 180, "a status line with explanations")
        text = output.read_text(errors="replace")
        assert "console: http://" in text and "token=" in text
        children = _roles_running(up)
        commands = [" ".join(c.cmdline()) for c in children]
        assert sum("--role explainer" in command for command in commands) == 2
        if stop == "sigterm":
            up.send_signal(signal.SIGTERM)
        elif stop == "sighup":  # the terminal or ssh session closed
            up.send_signal(signal.SIGHUP)
        else:  # what a terminal does on Ctrl-C: SIGINT to every process of its foreground group
            os.killpg(up.pid, signal.SIGINT)
        assert up.wait(120) == 0
        alive = [c for c in children if not _dead(c)]
        assert not alive, [" ".join(c.cmdline()) for c in alive]
        text = output.read_text(errors="replace")
        assert "stopping the stack" in text
        # each child stopped on its own SIGTERM with exit 0, the broker last: none killed
        assert " exited with " not in text, text[-2000:]
        # the paced producer flushed what it had sent before it exited
        producer_log = (tmp_path / "data" / "logs" / "producer.log").read_text(errors="replace")
        assert re.search(r"sent (\d+), acked \1, failed 0", producer_log), producer_log[-500:]
    finally:
        _kill_leftovers(up, children, tmp_path / "data")


def _read_until(up: subprocess.Popen[bytes], pattern: bytes, timeout: float) -> bytes:
    """What `up` wrote to its stdout pipe until ``pattern`` appeared (never blocking past the timeout)."""
    assert up.stdout is not None
    seen = b""
    deadline = time.monotonic() + timeout
    while pattern not in seen:
        assert time.monotonic() < deadline and up.poll() is None, f"no {pattern!r}: {seen[-2000:]!r}"
        if select.select([up.stdout], [], [], 1.0)[0]:
            chunk = os.read(up.stdout.fileno(), 65536)
            assert chunk, f"up closed its stdout: {seen[-2000:]!r}"
            seen += chunk
    return seen


@pytest.mark.parametrize("ending", ["sigkill", "closed-stdout"])
def test_no_child_outlives_up(tmp_path: Path, models_dir: Path, ending: str) -> None:
    """SIGKILL of `up` alone (an OOM kill, a supervisor), or `up | tee log` and then Ctrl-C
    (tee dies with it, `up`'s next print meets a closed pipe): no child left, ports free, 15 s."""
    env = _env(tmp_path, models_dir)
    data_dir = tmp_path / "data"
    stderr = tmp_path / "up.err"
    with stderr.open("wb") as err:
        up = subprocess.Popen(
            [*UP, "--explainers", "1", "--rate", "20"],
            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=err, start_new_session=True,
        )  # fmt: skip
    children: list[psutil.Process] = []
    try:
        _read_until(up, b"verdicts/s", 180)  # the stack is up: one status line printed
        children = _roles_running(up)
        assert len(_stack_processes(data_dir)) == len(children) + 1  # the oracle sees them all (and up)
        if ending == "sigkill":
            up.kill()
        else:
            assert up.stdout is not None
            up.stdout.close()  # the reader is gone; `up` meets EPIPE on its next status line
            fd1 = f"/proc/{up.pid}/fd/1"
            wait_until(
                lambda: up.poll() is not None or os.readlink(fd1) == os.devnull, 30, "up to see the EPIPE"
            )
            if up.poll() is None:
                up.send_signal(signal.SIGINT)  # the terminal's Ctrl-C
        wait_until(lambda: not _stack_processes(data_dir), 15, "every process of the stack to end")
        for name in ("FRAUDLENS_BROKER_PORT", "FRAUDLENS_RELAY_PORT"):
            assert not _listening(int(env[name])), f"{name} still taken"
        code = up.wait(30)
        assert code == (-signal.SIGKILL if ending == "sigkill" else 0), stderr.read_text(errors="replace")
        assert "Traceback" not in stderr.read_text(errors="replace")
    finally:
        _kill_leftovers(up, children, data_dir)


@pytest.mark.parametrize("victim", ["--role scorer", "broker --port"])
def test_up_restarts_a_killed_child_and_verdicts_resume(
    tmp_path: Path, models_dir: Path, victim: str
) -> None:
    """SIGKILL of the scorer, or of the broker (its noida-db ends with it; the new one starts on
    the same data dir): a new process of that role comes back, and transactions sent after it
    get their verdicts."""
    metrics_port = free_port()
    env = _env(tmp_path, models_dir, FRAUDLENS_METRICS_PORT=str(metrics_port))
    output = tmp_path / "up.out"
    with output.open("wb") as out:
        up = _start_up(env, out, "--explainers", "0", "--rate", "0")
    children: list[psutil.Process] = []
    try:
        wait_until(lambda: "verdicts/s" in output.read_text(errors="replace"), 180, "the first status line")
        children = psutil.Process(up.pid).children(recursive=True)
        (killed,) = _children_running(up, victim)
        killed.kill()
        wait_until(lambda: [c for c in _children_running(up, victim) if c.pid != killed.pid], 60, "a new one")
        name = "scorer" if "scorer" in victim else "broker"
        text = output.read_text(errors="replace")
        assert f"{name} exited with {-signal.SIGKILL} (its log: " in text, text[-2000:]
        bootstrap = f"127.0.0.1:{env['FRAUDLENS_BROKER_PORT']}"
        _expect_verdicts(bootstrap, list(generate_transactions(30, seed=5)))
        wait_until(
            lambda: re.search(r"\| restarts [1-9]", output.read_text(errors="replace")), 30, "restart counted"
        )
        # the restart is also a Prometheus counter on `up`'s own metrics port, by role
        token = create_token(load_or_create_secret(None, tmp_path / "data"), 60, time.time(), "prometheus")
        status, body = get(f"http://127.0.0.1:{metrics_port}/metrics", token)
        assert status == 200, body[:500]
        assert samples(body).get(("fraudlens_up_restarts_total", (("role", name),))) == 1.0, body[-1500:]
    finally:
        _kill_leftovers(up, children, tmp_path / "data")


def _children_running(up: subprocess.Popen[bytes], command: str) -> list[psutil.Process]:
    found = []
    for child in psutil.Process(up.pid).children():
        try:
            if command in " ".join(child.cmdline()):
                found.append(child)
        except psutil.Error:  # gone, or a zombie not yet reaped by `up`
            continue
    return found


def _expect_verdicts(bootstrap: str, transactions: list[dict[str, object]]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": bootstrap, "acks": "all"})
    for tx in transactions:
        producer.produce("transactions", key=str(tx["card_id"]).encode(), value=orjson.dumps(tx))
    assert producer.flush(30) == 0
    wanted = {str(tx["transaction_id"]) for tx in transactions}
    reader = TopicReader(bootstrap, "verdicts")
    try:
        reader.read_until(lambda m: wanted <= {x.key().decode() for x in m}, 120, "a verdict for each")
    finally:
        reader.close()


def test_up_gives_up_on_a_role_that_keeps_failing(tmp_path: Path, models_dir: Path) -> None:
    """A scorer pinned to a model version that is not registered fails at once, every time."""
    env = _env(
        tmp_path, models_dir, FRAUDLENS_MODEL_VERSION="no-such-version", FRAUDLENS_UP_RESTART_LIMIT="2"
    )
    output = tmp_path / "up.out"
    with output.open("wb") as out:
        up = _start_up(env, out, "--explainers", "0", "--rate", "0")
    try:
        assert up.wait(240) == 1
        text = output.read_text(errors="replace")
        assert "restart 1 in 1 s" in text and "restart 2 in 2 s" in text, text[-3000:]
        scorer_log = tmp_path / "data" / "logs" / "scorer.log"
        reason = (
            "scorer keeps failing (exit code 1; 2 restarts in a row, each failed within 60 s; "
            f"its log: {scorer_log}): giving up; stopping the stack"
        )
        assert reason in text, text[-3000:]
        assert "restart 3" not in text
        wait_until(lambda: not _stack_processes(tmp_path / "data"), 15, "every process of the stack to end")
    finally:
        _kill_leftovers(up, [], tmp_path / "data")
