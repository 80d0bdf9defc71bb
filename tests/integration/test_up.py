"""`fraudlens up`: the whole stack as children, verdicts and explanations flowing, and after a
SIGTERM, or a terminal's Ctrl-C (SIGINT to the whole foreground process group), every child
stopped cleanly in order and none left alive."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

from app.broker.embedded import free_port
from tests.integration.harness import REPO, wait_until


@pytest.mark.parametrize("stop", ["sigterm", "ctrl-c"])
def test_up_runs_the_stack_and_stops_every_child_cleanly(tmp_path: Path, models_dir: Path, stop: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FRAUDLENS_")}
    env.update(
        FRAUDLENS_DATA_DIR=str(tmp_path / "data"),
        FRAUDLENS_MODELS_DIR=str(models_dir),
        FRAUDLENS_BROKER_PORT=str(free_port()),
        FRAUDLENS_RELAY_PORT=str(free_port()),
        PYTHONUNBUFFERED="1",
    )
    output = tmp_path / "up.out"
    with output.open("wb") as out:
        up = subprocess.Popen(
            [sys.executable, "-m", "app.cli.main", "up", "--explainers", "2", "--rate", "40"],
            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    children: list[psutil.Process] = []
    try:

        def explained() -> bool:
            totals = re.findall(r"explained/s +\d+ \(total (\d+)\)", output.read_text(errors="replace"))
            return bool(totals) and int(totals[-1]) > 0

        wait_until(explained, 180, "a status line with explanations")
        text = output.read_text(errors="replace")
        assert "console: http://" in text and "token=" in text
        children = psutil.Process(up.pid).children(recursive=True)
        commands = [" ".join(c.cmdline()) for c in children]
        for role in ("broker", "--role scorer", "--role explainer", "relay", "produce"):
            assert any(role in command for command in commands), (role, commands)
        assert sum("--role explainer" in command for command in commands) == 2
        if stop == "sigterm":
            up.send_signal(signal.SIGTERM)
        else:  # what a terminal does on Ctrl-C: SIGINT to every process of its foreground group
            os.killpg(up.pid, signal.SIGINT)
        assert up.wait(120) == 0
        alive = [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
        assert not alive, [" ".join(c.cmdline()) for c in alive]
        text = output.read_text(errors="replace")
        assert "stopping the stack" in text
        # each child stopped on its own SIGTERM with exit 0, the broker last: none killed
        assert " exited with " not in text, text[-2000:]
        # the paced producer flushed what it had sent before it exited
        producer_log = (tmp_path / "data" / "logs" / "producer.log").read_text(errors="replace")
        assert re.search(r"sent (\d+), acked \1, failed 0", producer_log), producer_log[-500:]
    finally:  # a failed run must not leave the stack behind: stop each process by its own PID
        if up.poll() is None:
            up.send_signal(signal.SIGTERM)
            try:
                up.wait(60)
            except subprocess.TimeoutExpired:
                up.kill()
                up.wait(30)
        for child in children or []:
            if child.is_running():
                child.kill()
