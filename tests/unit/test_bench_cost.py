"""The pure arithmetic of ``bench.cost``: batches from update stamps, per-explanation figures,
the floor ratio, and the profile's categories and CPU attribution."""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest

from bench.cost import (
    WAITING,
    attribute,
    batches_of,
    categorize,
    phase_figures,
    profile_counts,
    summarize,
)


def _update(txid: str, completed_at: str, cache_hit: bool = False) -> dict[str, Any]:
    return {"transaction_id": txid, "cache_hit": cache_hit, "timings": {"completed_at": completed_at}}


def test_batches_are_the_computed_updates_sharing_a_completed_at_stamp_in_order() -> None:
    done = [
        _update("c", "2026-12-05T10:00:01.000002Z"),
        _update("a", "2026-12-05T10:00:01.000001Z"),
        _update("b", "2026-12-05T10:00:01.000001Z"),
        _update("hit", "2026-12-05T10:00:01.000001Z", cache_hit=True),  # no SHAP ran for it
    ]
    assert batches_of(done) == [["a", "b"], ["c"]]


def _phase(**overrides: Any) -> dict[str, Any]:
    phase = {
        "complete": 200, "seconds": 2.0, "cache_hits": 0,
        "cpu_s": {"broker_shim": 0.2, "broker_noida": 0.3, "scorer": 0.1, "explainer": 1.0, "relay": 0.1},
        "explainer_threads_cpu_s": {"MainThread": 0.3, "shap_0": 0.6, "librdkafka": 0.1},
        "records": {"explanation.updates": 600, "verdicts": 200, "transactions": 200},
        "batches": [["a"] * 4, ["b"] * 6], "shap_ms_per_row": 2.5, "shap_ms_per_row_batch_1": 2.6,
        "offered_tx_per_s": 100.0,
    }  # fmt: skip
    return phase | overrides


def test_phase_figures_per_explanation_and_per_record() -> None:
    figures = phase_figures(_phase())
    assert figures["explainer_ms_per_explanation"] == 5.0  # 1 s / 200
    assert figures["explainer_over_shap"] == 2.0  # 5 ms / 2.5 ms
    assert figures["mean_batch"] == 5.0
    assert figures["records_per_explanation"] == 5.0  # 1,000 records / 200
    assert figures["broker_us_per_record"] == {"shim": 200.0, "noida": 300.0}
    assert figures["explainer_threads_ms_per_explanation"] == {
        "MainThread": 1.5,
        "shap_0": 3.0,
        "librdkafka": 0.5,
    }


def test_nothing_explained_gives_no_ratio_rather_than_a_division_error() -> None:
    figures = phase_figures(_phase(complete=0, batches=[], shap_ms_per_row=None))
    assert figures["explainer_ms_per_explanation"] is None and figures["explainer_over_shap"] is None


def test_the_whole_stack_is_compared_with_shap_plus_features_plus_predict() -> None:
    summary = summarize({"steady": _phase(), "saturated": _phase()}, {"features_ms": 0.2, "predict_ms": 0.3})
    assert summary["cpu_ms_per_explained_tx"]["total"] == 8.5  # 1.7 s / 200
    assert summary["floor_ms"] == 3.0  # 2.5 + 0.2 + 0.3
    assert summary["whole_stack_over_floor"] == pytest.approx(8.5 / 3.0, abs=0.01)
    assert summary["cores"]["explainer"] == 0.5


def test_a_stack_goes_to_its_innermost_recognised_frame() -> None:
    shap = [
        "run (threading.py:1)",
        "contributions (app/explain/core.py:265)",
        "predict (lightgbm/basic.py:1)",
    ]
    raw = ["run (threading.py:1)", "raw_scores (app/explain/core.py:276)", "predict (lightgbm/basic.py:1)"]
    table = ["_execute_task (mode/services.py:1)", "write (app/explainer/table_io.py:88)",
             "_set (faust/stores/rocksdb.py:480)"]  # fmt: skip
    socket = [
        "send (aiokafka/conn.py:423)",
        "write (asyncio/streams.py:343)",
        "write (asyncio/selector_events.py:1)",
    ]
    assert categorize(shap) == "SHAP (pred_contrib)"
    assert categorize(raw) == "raw score for the additivity check"
    assert categorize(table) == "RocksDB (store reads and writes)"
    assert categorize(socket).startswith("consuming (aiokafka")
    assert (
        categorize(
            ["run (mode/threads.py:1)", "_run_once (asyncio/base_events.py:1)", "select (selectors.py:468)"]
        )
        == WAITING
    )
    assert categorize(["run (threading.py:982)", "_worker (concurrent/futures/thread.py:81)"]) == WAITING
    loop = ["start (mode/worker.py:1)", "_run_once (asyncio/base_events.py:1)", "_run (asyncio/events.py:80)"]
    assert categorize(loop) == "event loop: scheduling, callbacks"  # the loop's own, not Faust's
    assert categorize(["f (elsewhere.py:1)"]) == "other"


def test_thread_cpu_is_split_by_its_samples_leaving_out_the_select_waits() -> None:
    lines = [
        "thread (11): shap_0;run (threading.py:1);contributions (app/explain/core.py:265) 75",
        "thread (11): shap_0;run (threading.py:1);signatures (app/explain/splits.py:128) 25",
        "thread (10): MainThread;_run_once (asyncio/base_events.py:1884);select (selectors.py:468) 500",
        "thread (10): MainThread;Handle._run (asyncio/events.py:80);_set (faust/stores/rocksdb.py:480) 10",
        "not a line",
    ]
    counts = profile_counts(lines)
    assert counts["shap_0"] == Counter({"SHAP (pred_contrib)": 75, "prepare: feature row, signature": 25})
    shares = attribute(counts, {"shap_0": 4.0, "MainThread": 1.0, "librdkafka": 0.5})
    assert shares == {
        "SHAP (pred_contrib)": 3.0,
        "prepare: feature row, signature": 1.0,
        "RocksDB (store reads and writes)": 1.0,  # the main thread's CPU, all of it: select left out
        "thread librdkafka (no Python samples)": 0.5,
    }


def test_the_readme_block_shows_the_cost_figures_and_targets() -> None:
    from bench.report import render

    summary = summarize({"steady": _phase(), "saturated": _phase()}, {"features_ms": 0.2, "predict_ms": 0.3})
    verdict = {"target": "explainer ≤ 1.3× SHAP", "value": 2.0, "limit": 1.3, "pass": False}
    bench = {"summary": summary, "targets": {"t": verdict}, "plots": [], "duration_s": 1.0,
             "load_average_before": [1, 1, 1], "load_average_after": [1, 1, 1]}  # fmt: skip
    machine = {"cpus": 2, "cpu_model": "x", "memory_gb": 1}
    results = {"command": "python -m bench.cost", "date": "2026-12-05", "git_commit": "abc",
               "machine": machine, "benchmarks": {"cost": bench}}  # fmt: skip
    block = render(results)
    assert "**whole stack 2.83× the floor**" in block
    assert "| explainer | 5 | 0.50 | — |" in block and "| total | 8.50 | — | — |" in block
    assert "| steady | 100 | 5 | 2.50 | **2.0×** |" in block
    assert "| explainer ≤ 1.3× SHAP | 2.00 | **miss** |" in block
