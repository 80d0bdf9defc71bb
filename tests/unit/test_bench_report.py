"""The README performance block is generated from a results file: every target with pass/miss,
the command, date and commit that produced it, and nothing outside the markers touched."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from bench.common import target
from bench.report import BEGIN, END, render, replace_block, update_readme

FIXTURE = Path(__file__).parent / "bench_results_fixture.json"


@pytest.fixture
def results() -> dict[str, Any]:
    return json.loads(FIXTURE.read_text())


def test_every_target_is_listed_with_its_verdict(results: dict[str, Any]) -> None:
    block = render(results)
    for bench in results["benchmarks"].values():
        for verdict in bench["targets"].values():
            row = next(line for line in block.splitlines() if verdict["target"] in line)
            assert row.endswith("| pass |" if verdict["pass"] else "| **miss** |"), row


def test_block_names_command_date_commit_and_load(results: dict[str, Any]) -> None:
    block = render(results, "bench/results.json")
    assert block.startswith(BEGIN) and block.endswith(END)
    assert f"`{results['command']}`" in block
    assert results["date"] in block
    assert results["git_commit"][:12] in block
    for name, bench in results["benchmarks"].items():
        row = next(
            line for line in block.splitlines() if line.startswith(f"| {name} | {bench['duration_s']} s")
        )
        assert str(bench["load_average_before"]) in row and str(bench["load_average_after"]) in row


def test_section_figures_come_from_the_file(results: dict[str, Any]) -> None:
    results["benchmarks"]["scorer"]["summary"]["throughput"]["tx_per_s"] = 4321
    results["benchmarks"]["isolation"]["summary"]["p99_ratio"] = 7.65
    block = render(results)
    assert "**4,321 tx/s**" in block
    assert "**ratio 7.65**" in block


def test_a_broken_benchmark_is_reported_not_dropped(results: dict[str, Any]) -> None:
    results["benchmarks"]["relay"] = {
        "error": "Traceback …\nAssertionError: timed out after 60 s waiting for the relay to serve\n",
        "summary": {}, "targets": {}, "raw": {}, "plots": [],
        "duration_s": 61.0, "load_average_before": [1.0, 1.0, 1.0], "load_average_after": [2.0, 1.0, 1.0],
    }  # fmt: skip
    block = render(results)
    assert "| relay | — | — | **broke** (see results file) |" in block
    assert (
        "Broke in this run: `AssertionError: timed out after 60 s waiting for the relay to serve`." in block
    )


def test_only_the_marked_block_is_replaced(results: dict[str, Any], tmp_path: Path) -> None:
    readme = tmp_path / "README.md"
    before, after = "# title\n\nhand-written analysis\n\n", "\n\n## Next section\nkept\n"
    readme.write_text(before + f"{BEGIN}\nold figures\n{END}" + after)
    update_readme(results, tmp_path / "results.json", readme)
    text = readme.read_text()
    assert text.startswith(before) and text.endswith(after)
    assert "old figures" not in text
    assert text.count(BEGIN) == 1 and text.count(END) == 1
    update_readme(results, tmp_path / "results.json", readme)  # idempotent
    assert readme.read_text() == text


def test_a_readme_without_markers_is_refused() -> None:
    with pytest.raises(ValueError, match="bench:begin"):
        replace_block("# no markers here\n", f"{BEGIN}\nx\n{END}")


def test_target_verdicts() -> None:
    assert target("p99 ≤ 25 ms", 24.9, 25)["pass"] is True
    assert target("p99 ≤ 25 ms", 25.1, 25)["pass"] is False
    assert target("≥ 5,000 tx/s", 5000, 5000, higher_is_better=True)["pass"] is True
    assert target("≥ 5,000 tx/s", 4999, 5000, higher_is_better=True)["pass"] is False
    assert target("ratio ≤ 1.2", None, 1.2)["pass"] is False  # not measured is a miss
    assert target("ratio ≤ 1.2", float("nan"), 1.2)["pass"] is False


def test_every_table_row_has_as_many_cells_as_its_header() -> None:
    """On the tracked full results (every benchmark present): a row with a missing or extra
    cell renders as a broken table."""
    results = json.loads((Path(__file__).parents[2] / "bench" / "results.json").read_text())
    columns = None
    for line in render(results).splitlines():
        if not line.startswith("|"):
            columns = None
            continue
        cells = line.count("|") - 1
        if columns is None:
            columns = cells
        assert cells == columns, line
