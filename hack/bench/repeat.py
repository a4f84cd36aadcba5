"""Repeated runs of a scenario and their medians: `hack/bench.sh run SCENARIO --repeat 3`.

Each repeat is a whole run (every router, every stage, fresh pools) in <out>/rep-N/; then <out>/results.json
holds, per router and stage, the median of each figure over the repeats (TTFT and ITL percentiles,
tokens/s, hit rate, ... : the median of the per-run values, so a p90 is the middle run's p90), and
report.md its table and goal checks. A stage is marked CPU-bound when any repeat of it was, with how
many were ("2/3 repeats: machine 97% busy; ...").

Repeats run one after another, all routers in each (not one router three times in a row), so a slow
spell of the shared machine hits every router rather than one.
"""
from __future__ import annotations

import copy
import json
import math
import os
import statistics

from . import harness, report


def _median(values: list):
    nums = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and not math.isnan(v)]
    if not nums:
        return values[0] if values else None
    return statistics.median(nums)


def combine(runs: list[dict]) -> dict:
    """One results document whose stages are the medians of the runs' stages (same scenario)."""
    out = copy.deepcopy(runs[0])
    out["repeats"] = len(runs)
    out["runs"] = [r.get("outdir", "") for r in runs]
    for name, r in out["routers"].items():
        each = [run["routers"].get(name, {}) for run in runs]
        ok = [x for x in each if x.get("status") == "ok" and x.get("stages")]
        if not ok:
            continue
        r["status"] = "ok"
        r["repeats_ok"] = len(ok)
        stages = []
        for i, st in enumerate(ok[0]["stages"]):
            same = [x["stages"][i] for x in ok if i < len(x["stages"]) and x["stages"][i]["level"] == st["level"]]
            m = {}
            for k, v in st.items():
                if k == "cpu":
                    bound = [s["cpu"] for s in same if s["cpu"].get("cpu_bound")]
                    m["cpu"] = {"machine_busy": _median([s["cpu"]["machine_busy"] for s in same]),
                                "cpu_bound": bool(bound),
                                "why": (f"{len(bound)}/{len(same)} repeats: " + "; ".join(sorted({c['why'] for c in bound})))
                                if bound else "",
                                "cores": {g: _median([s["cpu"]["cores"].get(g, math.nan) for s in same])
                                          for g in st["cpu"].get("cores", {})},
                                "per_repeat": [s["cpu"].get("why", "") for s in same]}
                elif k == "error_kinds":
                    kinds = sorted({kk for s in same for kk in s.get("error_kinds", {})})
                    m[k] = {kk: _median([s.get("error_kinds", {}).get(kk, 0) for s in same]) for kk in kinds}
                elif isinstance(v, (int, float)) and not isinstance(v, bool):
                    m[k] = _median([s.get(k, math.nan) for s in same])
                else:
                    m[k] = v
            m["repeats"] = len(same)
            m["ttft_p90_each_s"] = [s["ttft_p90_s"] for s in same]
            m["output_tok_per_s_each"] = [s["output_tok_per_s"] for s in same]
            stages.append(m)
        r["stages"] = stages
    return out


def run(s, opts, n: int) -> tuple[dict, str]:
    base = opts.out or os.path.join(harness.ROOT, "out", "bench", f"{s.name}-x{n}-{harness.datetime.datetime.now():%Y%m%d-%H%M%S}")
    runs = []
    for k in range(1, n + 1):
        print(f"## repeat {k}/{n}", flush=True)
        opts.out = os.path.join(base, f"rep-{k}")
        res, outdir = harness.run(s, opts)
        res["outdir"] = os.path.relpath(outdir, harness.ROOT)
        runs.append(res)
    med = combine(runs)
    os.makedirs(base, exist_ok=True)
    path = os.path.join(base, "results.json")
    harness.write(path, med, opts.plots)
    return med, base


def recombine(paths: list[str], out: str) -> str:
    """Medians of runs already made (their results.json), written to out/results.json and report.md."""
    runs = []
    for p in paths:
        with open(p) as f:
            r = json.load(f)
        r["outdir"] = os.path.dirname(p)
        runs.append(r)
    med = combine(runs)
    os.makedirs(out, exist_ok=True)
    harness.write(os.path.join(out, "results.json"), med, "auto")
    return report.markdown(med)
