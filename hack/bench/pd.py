"""P/D benchmark: one workload over N pods served aggregated and split prefill:decode, in one run.

    .venv/bin/python -m hack.bench.pd hack/bench/scenarios/pd/long-input.yaml [--quick] [--variants a,b] [--repeat 3]

A P/D scenario is a harness scenario plus `variants: {name: overrides}`; each variant (e.g. roles
`decode` with a load-aware epp, roles `prefill,decode` with config/pd.yaml) runs as its own scenario
on fresh pods (decode sims behind epp-sidecar: hack/bench/pd_pool.py). Prints and writes one table:
per variant and rate, output tok/s, TTFT, ITL and E2E p50/p90, and the change against the first
variant (the aggregated baseline). With --repeat N every variant runs N times (all variants in turn,
then again) and the table shows the medians (hack/bench/repeat.py), each repeat's own table in
<out>/rep-K/.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

from testbed import scenario

from . import ROOT, harness
from .report import f

COLS = [("output_tok_per_s", "out tok/s", ".0f"), ("ttft_p50_s", "TTFT p50 s", ".3f"), ("ttft_p90_s", "TTFT p90 s", ".3f"),
        ("itl_p50_ms", "ITL p50 ms", ".1f"), ("itl_p90_ms", "ITL p90 ms", ".1f"), ("e2e_p50_s", "E2E p50 s", ".2f"),
        ("e2e_p90_s", "E2E p90 s", ".2f")]


def rows(results: dict[str, dict]) -> list[str]:
    lines = ["| variant | router | rate (req/s) | done | " + " | ".join(c[1] for c in COLS) + " | vs aggregated | CPU-bound |",
             "|---|---|---:|---:|" + "---:|" * len(COLS) + "---|---|"]
    base = None
    for vname, res in results.items():
        for rname, r in res["routers"].items():
            if r["status"] != "ok":
                lines.append(f"| {vname} | {rname} | | | {r['status']}: {r.get('reason', '')} |")
                continue
            for st in r["stages"]:
                if base is None:
                    base = {}
                key = st["level"]
                if vname == next(iter(results)):
                    base[key] = st
                b = base.get(key)
                vs = ""
                if b is not None and b is not st and b["output_tok_per_s"]:
                    vs = (f"tok/s x{st['output_tok_per_s'] / b['output_tok_per_s']:.2f}, "
                          f"E2E p50 {100 * (st['e2e_p50_s'] / b['e2e_p50_s'] - 1):+.0f}%, "
                          f"ITL p50 x{b['itl_p50_ms'] / st['itl_p50_ms']:.1f} lower, "
                          f"TTFT p50 {100 * (st['ttft_p50_s'] / b['ttft_p50_s'] - 1):+.0f}%")
                cpu = st.get("cpu") or {}
                lines.append(f"| {vname} | {rname} | {st['level']:g} | {st['completed']}/{st['sent']} | "
                             + " | ".join(f(st[k], spec) for k, _, spec in COLS)
                             + f" | {vs} | {'yes: ' + cpu.get('why', '') if cpu.get('cpu_bound') else 'no'} |")
    return lines


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m hack.bench.pd", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scenario")
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--variants", default="", help="comma list: run only these")
    ap.add_argument("--out", default="")
    ap.add_argument("--repeat", type=int, default=1)
    a = ap.parse_args(argv)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    outdir = a.out or os.path.join(ROOT, "out", "bench", f"pd-{stamp}")
    os.makedirs(outdir, exist_ok=True)
    runs: dict[str, list] = {}
    todo = scenario.variants(a.scenario, a.quick, [v for v in a.variants.split(",") if v])
    for k in range(1, a.repeat + 1):
        for name, s in todo:
            print(f"## variant {name}: roles {s.pool.roles}, {s.pool.count} pods, routers {s.routers}"
                  + (f" (repeat {k}/{a.repeat})" if a.repeat > 1 else ""), flush=True)
            sub = os.path.join(outdir, f"rep-{k}" if a.repeat > 1 else "", name.replace(":", "to"))
            opts = argparse.Namespace(out=sub, routers=[], install=False, plots="never", envoy_concurrency=2,
                                      quick=a.quick, client="bench")
            res, _ = harness.run(s, opts)
            runs.setdefault(name, []).append(res)
    from .repeat import combine
    results = {name: (rs[0] if len(rs) == 1 else combine(rs)) for name, rs in runs.items()}
    md = "\n".join(["# P/D benchmark", "", f"scenario {os.path.relpath(a.scenario, ROOT)}"
                    + (" (quick)" if a.quick else "") + (f", medians of {a.repeat} runs" if a.repeat > 1 else ""),
                    "", *rows(results)])
    with open(os.path.join(outdir, "report.md"), "w") as fh:
        fh.write(md + "\n")
    with open(os.path.join(outdir, "results.json"), "w") as fh:
        json.dump(results, fh, indent=1, default=str)
    print("\n" + md + f"\n\n(wrote {os.path.relpath(outdir, ROOT)}/report.md)")
    failed = [v for v, r in results.items() for x in r["routers"].values() if x["status"] != "ok"]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
