"""``make bench``: every benchmark against the real stack, one results file, then the README.

    python -m bench [--quick] [--only NAME ...] [--models DIR] [--out DIR]

Writes ``<out>/results.json`` (``results-quick.json`` with ``--quick``, so a short run never
overwrites a full one): per benchmark its summary, targets (pass/miss), raw data, plots, duration
and load average before and after; plus machine facts, date, git commit and the command. A full
run of every benchmark then regenerates README's performance section (``python -m bench.report``).
``--quick`` runs each benchmark's short form (CI): it asserts nothing about speed.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.common import git_commit, load_average, machine_facts

OUT = Path(__file__).resolve().parent
# Cheapest first; memory (5 minutes at 1,000 tx/s) last.
BENCHES = (
    "validator",
    "uncertainty",
    "similar",
    "soak",
    "records",
    "explainer_cost",
    "cost",
    "scorer",
    "broker_store",
    "isolation",
    "sync",
    "explainer",
    "kinds",
    "relay",
    "memory",
)


def results_name(quick: bool, only: list[str] | None = None) -> str:
    stem = "results" if not only or set(only) == set(BENCHES) else "results-" + "-".join(only)
    return f"{stem}-quick.json" if quick else f"{stem}.json"


def run_benches(names: list[str], quick: bool, models: Path, out: Path, command: str) -> dict[str, Any]:
    out.mkdir(parents=True, exist_ok=True)
    path = out / results_name(quick, names)
    results: dict[str, Any] = {
        "command": command, "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "git_commit": git_commit(), "machine": machine_facts(), "quick": quick,
        "models": str(models), "benchmarks": {},
    }  # fmt: skip
    for name in names:
        module = importlib.import_module(f"bench.{name}")
        before, began = load_average(), time.monotonic()
        print(f"[bench] {name} (load {before}) …", flush=True)
        try:
            result = module.run(quick, models, out)
        except Exception:  # one broken benchmark is reported, the others still run
            result = {"error": traceback.format_exc(), "summary": {}, "targets": {}, "raw": {}, "plots": []}
            print(result["error"], file=sys.stderr, flush=True)
        result |= {
            "duration_s": round(time.monotonic() - began, 1),
            "load_average_before": before, "load_average_after": load_average(),
        }  # fmt: skip
        results["benchmarks"][name] = result
        verdicts = {k: "pass" if t["pass"] else "miss" for k, t in result["targets"].items()}
        print(f"[bench] {name}: {result['duration_s']} s, targets {verdicts}", flush=True)
        path.write_text(json.dumps(results, indent=1, default=str) + "\n")  # partial results survive
    return results


def _parser(description: str | None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--quick", action="store_true", help="short forms (CI); assert nothing about speed")
    parser.add_argument("--models", type=Path, default=Path("models"), help="model registry [models]")
    parser.add_argument("--out", type=Path, default=OUT, help="where results and plots go [bench/]")
    return parser


def main() -> None:
    parser = _parser(__doc__)
    parser.add_argument("--only", nargs="+", choices=BENCHES, help="run only these benchmarks")
    parser.add_argument(
        "--no-report", action="store_true", help="do not regenerate README's section (implied by --out)"
    )
    args = parser.parse_args()
    names = list(args.only or BENCHES)
    command = " ".join(["python -m bench", *sys.argv[1:]])
    results = run_benches(names, args.quick, args.models, args.out, command)
    # README's block cites bench/results.json: a run written elsewhere (--out) leaves it alone.
    if not args.quick and not args.only and not args.no_report and args.out.resolve() == OUT:
        from bench.report import update_readme

        update_readme(results, args.out / results_name(False))
    failed = [n for n, r in results["benchmarks"].items() if "error" in r]
    if failed:
        raise SystemExit(f"benchmarks that broke: {failed}")


def main_one(name: str) -> None:
    """``python -m bench.<name>``: that benchmark alone, into results-<name>[-quick].json."""
    args = _parser(f"the {name} benchmark").parse_args()
    command = " ".join([f"python -m bench.{name}", *sys.argv[1:]])
    results = run_benches([name], args.quick, args.models, args.out, command)
    print(json.dumps(results["benchmarks"][name]["summary"], indent=1, default=str))
    if "error" in results["benchmarks"][name]:
        raise SystemExit(1)


if __name__ == "__main__":
    main()
