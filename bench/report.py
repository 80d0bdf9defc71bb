"""Regenerate README's performance figures from a results file (``python -m bench`` writes it).

    python -m bench.report [--results bench/results.json] [--readme README.md]

Only the text between ``<!-- bench:begin -->`` and ``<!-- bench:end -->`` is replaced; the
hand-written analysis (where the time goes) lives outside the markers.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
REPO = Path(__file__).resolve().parents[1]
Section = Callable[[Mapping[str, Any]], list[str]]


def _ms(value: Any) -> str:
    if not isinstance(value, int | float):
        return "—"
    if value >= 1000:
        return f"{value / 1000:.2f} s"
    return f"{value:.1f} ms" if value < 100 else f"{value:.0f} ms"


def _num(value: Any) -> str:
    if isinstance(value, float) and not value.is_integer() and abs(value) < 100:
        return f"{value:,.2f}"
    return f"{value:,.0f}" if isinstance(value, int | float) else "—"


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]


def _scorer(b: Mapping[str, Any]) -> list[str]:
    s = b["summary"]
    rows = [
        [_num(r["rate"]), _ms(r["verdict"].get("p50")), _ms(r["verdict"].get("p99")),
         _ms(r["verdict"].get("p99.9")), _ms(r["floor"].get("p50")), _ms(r["floor"].get("p99")),
         f"{r['p99_ratio']:.1f}×"]
        for r in s["latency"]
    ]  # fmt: skip
    header = ["tx/s", "verdict p50", "verdict p99", "verdict p99.9", "floor p50", "floor p99", "p99 ratio"]
    throughput = s["throughput"]
    return [
        *_table(header, rows),
        "",
        f"One scorer drained {_num(throughput['count'])} preloaded transactions at "
        f"**{_num(throughput['tx_per_s'])} tx/s**.",
    ]


def _isolation(b: Mapping[str, Any]) -> list[str]:
    s = b["summary"]
    rows = [
        [w["explainers"], _ms(w["p50_ms"]), _ms(w["p99_ms"]), w.get("explainers_cpu_cores", "—"),
         w.get("broker_cpu_cores", "—"), w.get("scorer_cpu_cores", "—"), w.get("load_average", "—")]
        for w in s["windows"]
    ]  # fmt: skip
    rows = [[w.get("lever", "—"), *row] for w, row in zip(s["windows"], rows, strict=True)]
    levers = [
        [name, "SCHED_IDLE" if lever["explainers_sched_idle"] else f"nice {lever['explainers_nice']}",
         f"nice {lever['verdict_path_nice']}", _ms(s["by_lever"][name]["p50_ms"]),
         _ms(s["by_lever"][name]["p99_ms"]), f"{s['by_lever'][name]['p99_ratio']}"]
        for name, lever in s.get("levers", {}).items()
    ]  # fmt: skip
    return [
        f"{_num(s['rate'])} tx/s, {_num(s['window_s'])} s windows, two explainers on interventional "
        "SHAP with a low-priority backlog, stopped (SIGSTOP) in the off windows; each saturated window "
        "under one scheduling lever (`app/runtime/priority.py`), set on every thread before it. "
        "Pooled p99: off "
        f"{_ms(s['p99_ms_off'])}, on with the defaults ({s.get('lever_of_target', '—')}) "
        f"{_ms(s['p99_ms_on'])}, **ratio {s['p99_ratio']}** (p50 {_ms(s['p50_ms_off'])} → "
        f"{_ms(s['p50_ms_on'])}).",
        "",
        *_table(["lever", "explainers", "broker and scorer", "verdict p50", "verdict p99", "p99 ÷ off"],
                levers),
        "",
        *_table(
            ["lever", "explainers", "verdict p50", "verdict p99", "CPU cores: explainers", "broker", "scorer",
             "load"],
            rows,
        ),
    ]  # fmt: skip


def _sync(b: Mapping[str, Any]) -> list[str]:
    s = b["summary"]
    rows = [
        [r["design"], _num(r["rate"]), _ms(r["p50_ms"]), _ms(r["p99_ms"]), _num(r["sustained_tx_per_s"])]
        for r in s["rows"]
    ]
    factors = ", ".join(f"{f}× at {rate} tx/s" for rate, f in s["sync_interventional_over_async_p99"].items())
    return [
        *_table(
            ["design", "paced tx/s", "verdict p50", "verdict p99", "sustained tx/s (breaks above)"], rows
        ),
        "",
        f"sync-interventional p99 / async p99: **{factors}**. Each design on a fresh broker, paced "
        f"for {_num(s['window_s'])} s at each rate after a 1 s warm-up. At 50 tx/s the synchronous "
        "designs keep up, so the difference is the inline explanation's cost; at 200 tx/s (the "
        "verdict benchmark's lowest rate) interventional SHAP inline falls behind, and its latency "
        "grows with the window. The last column is each synchronous design's drain rate of a "
        "preloaded backlog (batches of up to 1,000, SHAP at its most efficient; for async, the "
        "verdict path alone: the scorer's drain rate above).",
    ]


def _explainer(b: Mapping[str, Any]) -> list[str]:
    s = b["summary"]
    rows = []
    for run, priorities in s["gap_ms_p50_p95_published_p95"].items():
        for priority, (p50, p95, published, done) in priorities.items():
            rows.append([run, priority, _ms(p50), _ms(p95), _ms(published), done])
    drain = s["drain_s"]
    return [
        *_table(["explainers", "priority", "gap p50", "gap p95", "published p95", "complete/routed"], rows),
        "",
        f"Drain of a fixed backlog: one explainer {drain['one']} s, two {drain['two']} s "
        f"(**{drain['ratio']}×**).",
    ]


def _explainer_cost(b: Mapping[str, Any]) -> list[str]:
    s = b["summary"]
    rows = []
    for method, by_batch in s["rows_per_s"].items():
        shap_only = s["shap_only_rows_per_s"][method]
        rows += [[method, batch, _num(rate), _num(shap_only[batch])] for batch, rate in by_batch.items()]
    return [
        *_table(["method", "batch", "rows/s (compute path)", "rows/s (SHAP alone)"], rows),
        "",
        f"Cache hit rate on generator traffic: {s['cache_hit_rate']:.1%} "
        f"of {_num(s['cache_requests'])} requests.",
    ]


KIND_ROWS = ("contributions high", "contributions normal", "contributions low", "counterfactual high")


def _kinds(b: Mapping[str, Any]) -> list[str]:
    s = b["summary"]
    cpu = s["cpu_ms_per_explanation"]
    rows = [[name, _ms(p50), _ms(p95), done] for name, (p50, p95, done) in s["gap_ms_at_200"].items()]
    validity = ", ".join(f"{d} {_share(v)}" for d, v in s["validity_by_decision"].items())
    return [
        f"CPU per explanation: contributions {cpu['contributions']} ms (batches of 64), counterfactual "
        f"{cpu['counterfactual']} ms median, {cpu['counterfactual_p95']} ms p95 (one search). Validity: "
        f"{_share(s['validity_share'])} of {s['flagged']} generator deny/review verdicts get a verified "
        f"approve proposal ({validity}).",
        "",
        *_table(["kind, priority (200 tx/s, one explainer)", "gap p50", "gap p95", "complete/routed"], rows),
        "",
        "Gap p95 with counterfactuals routed (on) and without (off), alternating runs:",
        "",
        *_table(
            ["run", *KIND_ROWS],
            [
                [run, *(_ms(p95.get(name)) for name in KIND_ROWS)]
                for run, p95 in s.get("gap_ms_p95_by_run", {}).items()
            ],
        ),
    ]


def _uncertainty(b: Mapping[str, Any]) -> list[str]:
    s = b["summary"]
    coverage = [
        [level, *(_share3(per[name]) for name in ("legitimate", "fraud"))]
        for level, per in s["coverage"].items()
    ]
    reliability = [
        [f"{r['bin'][0]:g}–{r['bin'][1]:g}", r["rows"], r["frauds"], f"{r['observed']:.4f}",
         f"[{r['mean_p0']:.4f}, {r['mean_p1']:.4f}]", "yes" if r["inside"] else "**no**"]
        for r in s["reliability"]
    ]  # fmt: skip
    return [
        f"Model `{s['model_version']}`: calibrated on {s['calibration_rows']:,} rows "
        f"({s['calibration_frauds']} frauds), tested on {s['test_rows']:,} rows it never saw "
        f"({s['test_frauds']} frauds). {_share(s['uncertain_share'])} of test rows uncertain; "
        f"the uncertainty costs the router {s['cpu_us_per_verdict']} µs CPU per verdict.",
        "",
        *_table(["confidence", "coverage, legitimate", "coverage, fraud"], coverage),
        "",
        *_table(
            ["calibrated probability", "rows", "frauds", "observed", "mean interval", "inside"], reliability
        ),
    ]


def _lookup_cpu(s: Mapping[str, Any]) -> str:
    brute = s["brute_force_cpu_ms_per_lookup_by_batch"]
    return (
        "CPU per lookup by batch size, k-d tree (served) / brute force: "
        + ", ".join(
            f"{size}: {ms} / {brute[size]} ms" for size, ms in s["cpu_ms_per_lookup_by_batch"].items()
        )
        + "."
    )


def _similar(b: Mapping[str, Any]) -> list[str]:
    s = b["summary"]
    agreement, frauds = s["agreement"], s["frauds_with_fraud_majority"]
    return [
        f"Model `{s['model_version']}`: {s['reference_rows']:,} reference cases "
        f"({s['reference_frauds']} frauds); {s['test_rows']:,} test rows ({s['test_frauds']} frauds) "
        f"neither saw. The {s['k']} nearest cases' majority outcome against the test label. "
        + _lookup_cpu(s),
        "",
        *_table(
            ["space", "agreement, all rows", "frauds with a fraud majority"],
            [
                ["SHAP (served)", _share3(agreement["shap"]), _share3(frauds["shap"])],
                ["raw features, standardised", _share3(agreement["raw"]), _share3(frauds["raw"])],
                ["base rate (always legitimate)", _share3(agreement["base_rate"]), "0.000"],
            ],
        ),
    ]


def _share3(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "—"


def _share(value: Any) -> str:
    return f"{value:.0%}" if isinstance(value, int | float) else "—"


def _cost(b: Mapping[str, Any]) -> list[str]:
    s = b["summary"]
    per_tx, cores, parts = s["cpu_ms_per_explained_tx"], s["cores"], s["floor_parts_ms"]
    idle = s.get("idle_cores") or {}
    roles = [[role, _num(ms), _num(cores.get(role)), _num(idle.get(role))] for role, ms in per_tx.items()]
    phases = [
        [name, _num(p["explained_per_s"]), _num(p["explainer_ms_per_explanation"]),
         _num(p["shap_ms_per_row"]), f"**{p['explainer_over_shap']}×**", _num(p["mean_batch"]),
         _num(p["records_per_explanation"]),
         _num(p["broker_us_per_record"]["shim"]), _num(p["broker_us_per_record"]["noida"])]
        for name, p in s["phases"].items()
    ]  # fmt: skip
    header = ["phase", "explained/s", "explainer CPU-ms / explanation", "SHAP CPU-ms / row", "ratio",
              "mean batch", "records / explanation", "shim CPU-µs / record",
              "noida-db CPU-µs / record"]  # fmt: skip
    return [
        f"{_num(s['rate'])} tx/s ({s['offered_tx_per_s']} offered), one explainer, a relay with one client; "
        "CPU time (user + system) per fully explained transaction. The floor, measured in the same run "
        f"on the same rows in the explainer's own batches: SHAP {_num(parts['shap'])} + features "
        f"{parts['features']} + predict {parts['predict']} = {_num(s['floor_ms'])} CPU-ms; "
        f"**whole stack {s['whole_stack_over_floor']}× the floor**. Where the explainer's time goes: "
        "[docs/cost.md](docs/cost.md).",
        "",
        *_table(["role", "CPU-ms / explained tx", "cores", "cores idle (no traffic)"], roles),
        "",
        f"Explained in the window: {_share(s.get('explained_share_of_offered'))} of the transactions offered "
        "(below ~97% the explainer fell behind and every per-transaction figure is inflated).",
        "",
        *_table(header, phases),
    ]


def _relay(b: Mapping[str, Any]) -> list[str]:
    rows = [
        [r["clients"], _num(r["rate"]), _ms(r["p50_ms"]), _ms(r["p99_ms"]),
         f"{r['delivered']:,}/{r['expected']:,}", r["dropped_clients"], r.get("relay_cpu_us_per_frame", "—"),
         r.get("client_cpu_cores", "—")]
        for r in b["summary"]["runs"]
    ]  # fmt: skip
    header = ["clients", "verdicts/s", "p50", "p99", "delivered", "dropped clients", "relay CPU µs/frame",
              "load client CPU cores"]  # fmt: skip
    return _table(header, rows)


def _memory(b: Mapping[str, Any]) -> list[str]:
    s = b["summary"]
    rows = [
        [role, f"{f['peak_mb']:.0f}", f"{f['end_mb']:.0f}", f"{f['slope_mb_per_min']:+.1f}"]
        for role, f in s["roles"].items()
    ]
    return [
        f"{_num(s['rate'])} tx/s offered ({s['offered_tx_per_s']} achieved by the producer) for "
        f"{_num(s['seconds'])} s; RSS incl. children sampled every second.",
        "",
        *_table(["role", "peak MB", "end MB", "slope, last 60% (MB/min)"], rows),
    ]


def _broker_store(b: Mapping[str, Any]) -> list[str]:
    s = b["summary"]
    rows = [
        [f"{r['fill_mb']:.0f}", _num(r.get("background_msg_per_s", 0)), f"{r['store_file_mb']:.0f}",
         _ms(r["p50_ms"]), _ms(r["p99_ms"]),
         f"{r['noida_cpu_cores']:.2f}"]
        for r in s["levels"]
    ]  # fmt: skip
    header = ["filler MB", "other writes msg/s", "noida-db store file MB", "floor p50", "floor p99",
              "noida-db CPU cores"]  # fmt: skip
    return [
        f"One broker, no workers: a filler topic (never read) at each level, then the floor "
        f"(produce → consume, no Faust) paced at {_num(s['rate'])} msg/s.",
        "",
        *_table(header, rows),
    ]


def _records(b: Mapping[str, Any]) -> list[str]:
    s = b["summary"]
    rows = [[topic, _num(n)] for topic, n in sorted(s["per_topic"].items(), key=lambda kv: -kv[1])]
    return [
        f"{_num(s['transactions'])} transactions through broker, scorer and one explainer, every "
        f"explanation complete: **{_num(s['records_per_tx'])} broker records per transaction** "
        "(end offsets after − before; DESIGN-NOTES says what each is for), contributions alone.",
        "",
        *_table(["topic", "records per transaction"], rows),
        *(
            [
                "",
                f"As the explainer runs by default, with a counterfactual for each deny and review "
                f"({_num(s['counterfactuals'])} of them): **{_num(s['default_records_per_tx'])} per "
                f"transaction**, {_num(s['records_per_counterfactual'])} records per counterfactual "
                "(its three statuses).",
            ]
            if s.get("counterfactuals")
            else []
        ),
    ]


def _soak(b: Mapping[str, Any]) -> list[str]:
    s = b["summary"]
    if not s.get("found"):
        return [f"No soak result: {s.get('why', 'not run')}."]
    failed = [c["series"] for c in s["checks"] if not c["ok"]]
    return [
        f"`{s['command']}` ({s['date']}, commit `{s['git_commit']}`): {_num(s['minutes'])} minutes at "
        f"{_num(s['rate'])} tx/s, {s['explainers']} explainer(s), lows sampled at {s['low_sample_rate']}; "
        f"sent {_num(s['sent'])}, lost {_num(s['lost'])}; **{'passed' if s['passed'] else 'failed'}**"
        + (f" (grew: {', '.join(failed)})." if failed else "."),
    ]


def _validator(b: Mapping[str, Any]) -> list[str]:
    s = b["summary"]
    return [
        f"`validate_transaction`: {s['valid_us_per_message']} µs per valid message, "
        f"{s['malformed_us_per_message']} µs per malformed one (best of three passes)."
    ]


SECTIONS: dict[str, tuple[str, Section]] = {
    "scorer": ("Verdict latency beside the broker floor", _scorer),
    "broker_store": ("The embedded broker's floor against the data it holds", _broker_store),
    "isolation": ("Isolation: verdict latency with the explainers stopped vs saturated", _isolation),
    "sync": ("Synchronous baseline: explanation inline vs async", _sync),
    "explainer": ("Explanation gap per priority at 500 tx/s, and drain", _explainer),
    "kinds": ("Kinds of explanation: CPU per explanation, gap per priority at 200 tx/s, validity", _kinds),
    "explainer_cost": ("Explainer cost", _explainer_cost),
    "cost": ("Whole-stack CPU per explained transaction, and the explainer's beside SHAP's", _cost),
    "records": ("Broker records per transaction", _records),
    "soak": ("Soak (`make soak`, run apart: 30 minutes)", _soak),
    "relay": ("Relay fan-out", _relay),
    "memory": ("Memory per role", _memory),
    "validator": ("Validator", _validator),
    "uncertainty": (
        "How sure: conformal coverage and Venn-ABERS reliability on the test split",
        _uncertainty,
    ),
}


def _targets(benchmarks: Mapping[str, Any]) -> list[str]:
    rows = []
    for name, bench in benchmarks.items():
        if "error" in bench:
            rows.append([name, "—", "—", "**broke** (see results file)"])
        for t in bench.get("targets", {}).values():
            value = t["value"]
            shown = f"{value:,.2f}" if isinstance(value, int | float) else "—"
            rows.append([name, t["target"], shown, "pass" if t["pass"] else "**miss**"])
    return _table(["benchmark", "target", "measured", "result"], rows)


def render(results: Mapping[str, Any], results_path: str = "bench/results.json") -> str:
    """The generated block (markers included) for one results file."""
    machine = results["machine"]
    benchmarks = results["benchmarks"]
    lines = [
        BEGIN,
        f"<!-- generated by `python -m bench.report` from {results_path}; edit outside the markers -->",
        f"Generated from `{results_path}`, produced by `{results['command']}` on {results['date']} at commit "
        f"`{results['git_commit'][:12]}`, on {machine['cpus']} cores "
        f"({machine['cpu_model'] or 'unknown CPU'}, {machine['memory_gb']} GB) shared with other work: "
        "the load average before and after each benchmark is listed at the end; read every figure "
        "with it in mind.",
        "",
        "**Targets** (a miss is reported, not hidden):",
        "",
        *_targets(benchmarks),
    ]
    for name, (title, section) in SECTIONS.items():
        bench = benchmarks.get(name)
        if bench is None:
            continue
        lines += ["", f"**{title}** (`bench/{name}.py`)", ""]
        if "error" in bench:
            last = bench["error"].strip().splitlines()[-1] if bench["error"].strip() else "error"
            lines.append(f"Broke in this run: `{last}`.")
        else:
            lines += section(bench)
    plots = [p for bench in benchmarks.values() for p in bench.get("plots", [])]
    if plots:
        lines += ["", "Plots: " + ", ".join(f"[{p}](bench/{p})" for p in plots) + "."]
    load_rows = [
        [name, f"{b['duration_s']} s", b["load_average_before"], b["load_average_after"]]
        for name, b in benchmarks.items()
        if "duration_s" in b
    ]
    lines += ["", *_table(["benchmark", "took", "load avg before (1/5/15 min)", "after"], load_rows), END]
    return "\n".join(lines)


def replace_block(text: str, block: str) -> str:
    """``text`` with the block between the markers replaced by ``block``."""
    start, end = text.find(BEGIN), text.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README has no {BEGIN} … {END} block to regenerate")
    return text[:start] + block + text[end + len(END) :]


def update_readme(results: Mapping[str, Any], results_path: Path, readme: Path = REPO / "README.md") -> None:
    try:
        shown = results_path.resolve().relative_to(REPO)
    except ValueError:
        shown = results_path
    readme.write_text(replace_block(readme.read_text(), render(results, str(shown))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results.json")
    parser.add_argument("--readme", type=Path, default=REPO / "README.md")
    args = parser.parse_args()
    update_readme(json.loads(args.results.read_text()), args.results, args.readme)
    print(f"{args.readme}: performance section regenerated from {args.results}")


if __name__ == "__main__":
    main()
