"""Issue 18, target 6: ``make soak`` (30 minutes at 300 tx/s, one explainer) passes its own
criteria. The soak is too long for ``make bench`` (about 25 minutes): this benchmark reads the
latest ``make soak`` report (``bench/results-soak.json``, kept in git) and judges it; a report
of another length, rate or explainer count is no pass.

    python -m bench.soak   (reads; ``make soak`` runs)
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from bench.common import target

REPORT = Path(__file__).resolve().parent / "results-soak.json"
WANTED = {"minutes": 30.0, "rate": 300.0, "explainers": 1}


def run(quick: bool, models: Path, out: Path) -> dict[str, Any]:
    summary: dict[str, Any] = {"found": REPORT.exists(), "wanted": WANTED}
    value = 0.0
    if not REPORT.exists():
        summary["why"] = f"{REPORT.name} absent: run `make soak`"
    else:
        report = orjson.loads(REPORT.read_bytes())
        summary |= {k: v for k, v in report.items() if k != "samples"}
        mismatched = {k: report.get(k) for k, v in WANTED.items() if report.get(k) != v}
        if mismatched:
            summary["why"] = f"the report is of another run: {mismatched}"
        value = 1.0 if report.get("passed") and not mismatched else 0.0
    targets = {
        "soak_30min_300tx_one_explainer": target(
            "make soak, 30 min at 300 tx/s with one explainer, passes its criteria (1 = passed)",
            value,
            1.0,
            higher_is_better=True,
        )
    }
    return {"summary": summary, "targets": targets, "raw": {}, "plots": []}


if __name__ == "__main__":
    from bench.__main__ import main_one

    main_one("soak")
