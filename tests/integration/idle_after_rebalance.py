"""Reproduced the defect docs/limits.md tells of (repaired in ac17cd8): an explainer idle for good
after the start-up rebalance. The scenario of ``test_explainer.py::test_two_explainers_share_the_work`` (two
explainers started together, 1,500 verdicts written at once, none after), run again and again;
on a run that does not finish within ``--timeout``, ``py-spy dump`` of both explainers and their
logs are kept under ``--out``. Not a test (it is not collected): a tool for the fix.

    python -m tests.integration.idle_after_rebalance [--runs 30] [--timeout 120] [--out DIR]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from app.settings import get_settings
from tests.integration.harness import Stack
from tests.integration.test_explainer import complete_ids, scored_verdicts, send


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--timeout", type=float, default=120)
    parser.add_argument("--models", type=Path, default=None)
    parser.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "idle-after-rebalance")
    args = parser.parse_args()
    models = args.models or get_settings().models_dir
    verdicts = list(scored_verdicts(models, 8000, 5)[2500:4000])
    wanted = {v["transaction_id"] for v in verdicts}
    py_spy = Path(sys.executable).with_name("py-spy")
    for run in range(args.runs):
        root = Path(tempfile.mkdtemp(prefix=f"idle-after-rebalance-{run}-"))
        stack = Stack(root=root, models_dir=models)
        try:
            stack.start_broker()
            env = {"FRAUDLENS_EXPLAIN_STATS_EVERY_S": "1"}
            explainers = [stack.start_worker("explainer", FRAUDLENS_INSTANCE_ID=n, **env) for n in "ab"]
            updates = stack.reader("explanation.updates")
            send(stack, "verdicts", verdicts)
            began = time.monotonic()
            while not wanted <= complete_ids(updates) and time.monotonic() - began < args.timeout:
                updates.poll(1.0)
            done = len(wanted & complete_ids(updates))
            print(
                f"run {run}: {done} of {len(wanted)} complete in {time.monotonic() - began:.1f} s", flush=True
            )
            if done < len(wanted):
                kept = args.out / f"run-{run}"
                shutil.copytree(root / "logs", kept / "logs")
                for name, process in zip("ab", explainers, strict=True):
                    dump = subprocess.run(
                        [str(py_spy), "dump", "--pid", str(process.pid)], capture_output=True, text=True
                    )
                    (kept / f"py-spy-{name}.txt").write_text(dump.stdout + dump.stderr)
                print(f"stalled: logs and py-spy dumps in {kept}")
                return 1
        finally:
            stack.stop_all()
            shutil.rmtree(root, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
