"""The planner against the wall-clock benchmark: same scenario, same configs, stage by stage.

    python -m epp_plan.fidelity BENCH_RESULTS.json [BENCH_RESULTS.json ...] [--out FILE.json] [--markdown]

For each benchmark run (hack.bench's results.json, or hack.bench.pd's with its variants) the planner
simulates the same scenario with each epp router the run measured, its stack calibrated from that run
(`--calibrate-from`: the client's TTFT over the sims' own, the wall latency the stack added on that
machine), and prints per stage the wall-clock and planner figures of throughput, TTFT p50/p90 (and,
for information, ITL p50 and hit rate) with the planner's deviation. `reference(...)` turns a run into
the compact JSON the fidelity test keeps (tests/data/plan_fidelity.json).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys

from .candidates import Candidate, adapt, config_path
from .cli import calibrated_router_ms
from .plan import Workload, run_candidate
from .stack import Stack

METRICS = ("output_tok_per_s", "ttft_p50_s", "ttft_p90_s")
INFO = ("itl_p50_ms", "hit_rate", "server_ttft_mean_s")


def reference(path: str, scenario_path: str) -> dict:
    """A benchmark results.json as {scenario, router_ms, runs: [{variant, router, roles, stages: [...]}]}."""
    with open(path) as fh:
        res = json.load(fh)
    runs = res.items() if "routers" not in res else [("", res)]
    out = {"scenario": scenario_path, "bench": os.path.relpath(path), "router_ms": calibrated_router_ms(path, Stack().return_ms),
           "epp": _commit(), "runs": []}
    for variant, run in runs:
        pool = run["scenario"]["pool"]
        for router, r in run["routers"].items():
            if r.get("status") != "ok" or not router.startswith("epp"):
                continue
            out["runs"].append({
                "variant": variant, "router": router, "roles": pool["roles"], "count": pool["count"],
                "quick": run["scenario"].get("quick", False),
                "stages": [{"level": s["level"], **{k: s.get(k, math.nan) for k in METRICS + INFO},
                            "cpu_bound": bool(s.get("cpu", {}).get("cpu_bound"))} for s in r["stages"]]})
    return out


def _commit() -> str:
    """The checkout's commit: the references hold for the routing of that epp."""
    import subprocess
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def simulate(ref: dict, max_stages: int = 0, repeats: int = 5) -> list[dict]:
    """Runs the planner for every run of a reference; returns rows of (run, stage, bench, plan)."""
    rows = []
    stack_base = None
    for run in ref["runs"]:
        wl = Workload("scenario", ref["scenario"], run["quick"], run["variant"], max_stages=max_stages)
        s = wl.scenario()
        if stack_base is None:
            stack_base = Stack(time_scale=s.pool.time_scale, router_ms=ref["router_ms"])
        roles = [r.strip() for r in run["roles"].split(",")]
        roles = [roles[i % len(roles)] for i in range(run["count"])]
        with open(config_path(run["router"])) as fh:
            text = adapt(fh.read(), s.pool.model, s.pool.block_size)
        c = Candidate(run["router"], run["router"], text, roles, workload=wl)
        got = run_candidate(c, wl, [], stack_base, repeats=repeats)
        for b, p in zip(run["stages"], got["stages"]):
            rows.append({"variant": run["variant"], "router": run["router"], "level": b["level"],
                         "bench": b, "plan": {k: p[k] for k in METRICS + INFO},
                         "range": {k: p["spread"][k] for k in METRICS} if "spread" in p else {},
                         "cpu_s": got["sim"]["cpu_s"]})
    return rows


def deviation(plan: float, bench: float) -> float:
    if not bench or bench != bench or plan != plan:
        return math.nan
    return plan / bench - 1.0


def markdown(rows: list[dict]) -> list[str]:
    lines = ["| variant | router | rate | out tok/s bench / plan | TTFT p50 bench / plan [range] | TTFT p90 bench / plan [range] "
             "| ITL p50 bench / plan | hit rate bench / plan | sims' mean TTFT bench / plan |",
             "|---|---|---:|---|---|---|---|---|---|"]
    for r in rows:
        b, p = r["bench"], r["plan"]

        def cell(k, fmt, scale=1.0, unit=""):
            d = deviation(p[k], b[k])
            dv = "" if d != d else f" ({d:+.0%})"
            rng = r.get("range", {}).get(k)
            span = f" [{rng[0] * scale:{fmt}}-{rng[1] * scale:{fmt}}]" if rng and k != "output_tok_per_s" else ""
            inside = " in range" if rng and abs(d) > 0.10 and rng[0] <= b[k] <= rng[1] else ""
            return f"{b[k] * scale:{fmt}}{unit} / {p[k] * scale:{fmt}}{unit}{span}{dv}{inside}"
        cpu = " (CPU-bound)" if b.get("cpu_bound") else ""
        lines.append(f"| {r['variant'] or '-'} | {r['router']} | {r['level']:g}{cpu} | {cell('output_tok_per_s', '.0f')} | "
                     f"{cell('ttft_p50_s', '.0f', 1e3, ' ms')} | {cell('ttft_p90_s', '.0f', 1e3, ' ms')} | "
                     f"{cell('itl_p50_ms', '.1f', 1, ' ms')} | {b['hit_rate'] * 100:.1f}% / {p['hit_rate'] * 100:.1f}% | "
                     f"{cell('server_ttft_mean_s', '.0f', 1e3, ' ms')} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m epp_plan.fidelity", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="SCENARIO=BENCH_RESULTS.json pairs")
    ap.add_argument("--out", default="", help="write the references (for tests/data/plan_fidelity.json)")
    ap.add_argument("--repeats", type=int, default=5, help="planner runs per config (seeds): medians and ranges")
    a = ap.parse_args(argv)
    refs, all_rows = [], []
    for spec in a.runs:
        scen, sep, res = spec.partition("=")
        if not sep:
            ap.error(f"{spec!r}: want SCENARIO=RESULTS.json")
        ref = reference(res, scen)
        refs.append(ref)
        rows = simulate(ref, repeats=a.repeats)
        all_rows += rows
        print(f"\n{scen} (bench {res}; stack router_ms {ref['router_ms']:.1f} from it)\n")
        print("\n".join(markdown(rows)))
    worst = max((abs(deviation(r["plan"][k], r["bench"][k])) for r in all_rows for k in METRICS), default=math.nan)
    print(f"\nlargest deviation on throughput / TTFT p50 / TTFT p90: {worst:.1%}")
    if a.out:
        with open(a.out, "w") as fh:
            json.dump(refs, fh, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
