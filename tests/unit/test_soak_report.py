"""The soak's pass criterion and plots on made-up samples: flat passes, growth fails."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.integration.soak_report import checks, judged, plot, theil_sen_slope


def samples(minutes: float = 30, every_s: float = 10, **grow: float) -> list[dict[str, Any]]:
    """Flat, noisy series; ``grow`` adds a per-second trend to ``rss``, ``backlog``, ``gap``, ``latency``."""
    out = []
    for i in range(int(minutes * 60 / every_s)):
        t = i * every_s
        noise = (-1) ** i * 5 + (40 if i % 17 == 0 else 0)  # jitter and the odd spike
        out.append({
            "t": t,
            "rss_mb": {"scorer": 300 + noise + grow.get("rss", 0) * t, "relay": 120 + noise},
            "queue_depth": {"high": 0, "normal": 3, "low": 40},
            "backlog": 43 + noise + grow.get("backlog", 0) * t,
            "gap_p50_ms": {"high": 80, "normal": None, "low": 900},
            "gap_p95_ms": {"high": 300 + noise + grow.get("gap", 0) * t, "normal": None, "low": 2000},
            "latency_p50_ms": 20.0,
            "latency_p99_ms": 90 + noise + grow.get("latency", 0) * t,
        })  # fmt: skip
    return out


def failed(results: list[dict[str, Any]]) -> set[str]:
    return {c["series"] for c in results if not c["ok"]}


def test_flat_noisy_series_pass() -> None:
    results = checks(samples(), lost=0)
    assert not failed(results), results
    assert {c["series"] for c in results} >= {"rss_mb scorer", "rss_mb relay", "explain backlog"}
    assert "gap_p95_ms normal" not in {c["series"] for c in results}, "no data, no judgement"


@pytest.mark.parametrize(
    ("grow", "series"),
    [
        ({"rss": 0.05}, "rss_mb scorer"),  # 3 MB a minute: 72 MB over the judged 24 minutes
        ({"backlog": 1.0}, "explain backlog"),  # one request a second the explainers do not drain
        ({"gap": 5.0}, "gap_p95_ms high"),
        ({"latency": 0.5}, "verdict latency_p99_ms"),
    ],
)
def test_a_series_that_keeps_growing_fails(grow: dict[str, float], series: str) -> None:
    assert failed(checks(samples(**grow), lost=0)) == {series}


def test_lost_verdicts_fail() -> None:
    assert failed(checks(samples(), lost=1)) == {"lost verdicts"}


def test_start_up_is_not_judged() -> None:
    run = samples(minutes=30)
    for s in run[:30]:  # the first 5 minutes: memory fills up while models and tables load
        s["rss_mb"]["scorer"] += 10 * s["t"]
    assert not failed(checks(run, lost=0))
    assert judged(run)[0]["t"] >= 0.2 * run[-1]["t"]


def test_theil_sen_ignores_spikes() -> None:
    times = list(range(100))
    values = [5.0] * 100
    values[50] = values[51] = 10_000.0
    assert theil_sen_slope(times, values) == 0.0
    assert theil_sen_slope([1, 1], [1, 2]) == 0.0


def test_too_few_samples_fail_rather_than_pass() -> None:
    assert "explain backlog" in failed(checks(samples(minutes=0.5), lost=0))


def test_plot_writes_a_png(tmp_path: Path) -> None:
    report = {"samples": samples(minutes=3), "rate": 500, "minutes": 3, "passed": True}
    plot(report, tmp_path / "soak.png")
    assert (tmp_path / "soak.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
