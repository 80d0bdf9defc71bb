"""Every benchmark's short form runs end to end on the real stack, so the scripts never rot.

It asserts that each benchmark produced its figures and a pass/miss for each target, never
how fast anything was (speed belongs in ``make bench``, not in a test on a shared machine).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.__main__ import BENCHES
from bench.report import render
from tests.integration.harness import REPO


@pytest.mark.timeout(900)
def test_every_benchmark_runs_in_its_quick_form(tmp_path: Path, models_dir: Path) -> None:
    readme_before = (REPO / "README.md").read_text()
    run = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--models", str(models_dir), "--out", str(tmp_path)],
        cwd=REPO, capture_output=True, text=True, timeout=840,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert not (tmp_path / "results.json").exists(), "a quick run must never write the full results file"
    results = json.loads((tmp_path / "results-quick.json").read_text())
    assert results["quick"] is True and results["command"].startswith("python -m bench --quick")
    assert set(results["benchmarks"]) == set(BENCHES)
    for name, bench in results["benchmarks"].items():
        assert "error" not in bench, f"{name}: {bench.get('error')}"
        assert bench["summary"], name
        for verdict in bench["targets"].values():
            assert isinstance(verdict["pass"], bool) and verdict["target"], (name, verdict)
        for plot in bench["plots"]:
            assert (tmp_path / plot).stat().st_size > 1000, (name, plot)
        assert len(bench["load_average_before"]) == 3 and len(bench["load_average_after"]) == 3
    # the benchmarks with targets in the issue report them
    for name in ("scorer", "isolation", "sync", "explainer", "relay", "memory", "records", "cost", "soak"):
        assert results["benchmarks"][name]["targets"], name
    assert "**Targets**" in render(results)
    assert (REPO / "README.md").read_text() == readme_before, "a quick run must not regenerate the README"
