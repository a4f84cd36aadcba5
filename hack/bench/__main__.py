"""Routing benchmark harness (docs/benchmarks.md).

    hack/bench.sh run hack/bench/scenarios/shared-prefix.yaml            # every router of the scenario
    hack/bench.sh run hack/bench/scenarios/precise-kv.yaml --routers epp-approx,epp-precise
    hack/bench.sh run hack/bench/scenarios/shared-prefix.yaml --quick    # < 3 minutes: the smoke test
    hack/bench.sh overhead [--quick]                                     # added latency, instant backends
    hack/bench.sh epp-overhead [--quick] [--sizes 1,16,256] [--endpoints 8,64]   # epp's own costs, in depth
    hack/bench.sh pinned [--quick] [--configs ...] [--sizes 16k,256k,1m] [--sse 256]  # closed loop, one core
    hack/bench.sh run heterogeneous --repeat 3                          # 3 whole runs and their medians
    hack/bench.sh median OUT run1/results.json run2/results.json ...    # medians of runs made separately
    hack/bench.sh plot out/bench/<run>/results.json                      # redraw plots, rewrite report.md
    hack/bench.sh list                                                   # scenarios and routers

(`hack/bench.sh` is `.venv/bin/python -m hack.bench`, run from the repository root.) Writes out/bench/<scenario>-<time>/results.json,
report.md and PNG plots, and prints the report.
"""
from __future__ import annotations

import argparse
import glob
import os
import sys

from testbed.children import stop_on_signals

from . import HERE, ROOT


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="hack/bench.sh", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run a scenario")
    r.add_argument("scenario", help="a YAML file (hack/bench/scenarios/*.yaml) or a scenario's name")
    r.add_argument("--quick", action="store_true", help="the scenario's `quick` overrides: a smoke run in < 3 min")
    r.add_argument("--routers", default="", help="comma list overriding the scenario's routers")
    r.add_argument("--out", default="", help="output directory (default out/bench/<scenario>-<time>)")
    r.add_argument("--no-install", dest="install", action="store_false",
                   help="do not pip-install peers or matplotlib (peers not installed yet are reported unavailable)")
    r.add_argument("--plots", choices=("install", "auto", "never"), default=None,
                   help="install: matplotlib into out/bench-venvs when missing (default); auto: only if present "
                        "(default with --quick); never")
    r.add_argument("--envoy-concurrency", type=int, default=2)
    r.add_argument("--repeat", type=int, default=1, help="whole runs, one after another; the report shows their "
                                                         "medians (hack/bench/repeat.py)")
    r.add_argument("--client", choices=("bench", "inference-perf"), default="bench",
                   help="the load generator: ours, or kubernetes-sigs' inference-perf (Python >= 3.12, installed "
                        "into out/bench-venvs/inference-perf)")
    o = sub.add_parser("overhead", help="added latency and sustained rate: Envoy, Envoy+epp, peers (instant backends)")
    o.add_argument("--quick", action="store_true")
    o.add_argument("--peers", default="sglang-rr,sglang-cache-aware,vllm-router-rr,vllm-router-cache-aware",
                   help="comma list of peers to add ('' for none)")
    o.add_argument("--endpoints", type=int, default=8)
    o.add_argument("--size", type=int, default=16, help="prompt KB")
    o.add_argument("--no-install", dest="install", action="store_false")
    o.add_argument("--out", default=os.path.join(ROOT, "out", "bench", "overhead.json"))
    sub.add_parser("epp-overhead", help="epp's added latency, sustained rate, CPU and decisions per core by "
                                        "prompt and pool size (its own flags: epp-overhead --help)")
    sub.add_parser("pinned", help="closed-loop wrk, proxy and backends pinned to core 0: Envoy, Envoy + epp "
                                  "(response modes), peers, by prompt size (its own flags: pinned --help)")
    pl = sub.add_parser("plot", help="(re)draw a run's plots and rewrite its report.md")
    pl.add_argument("results", help="out/bench/<run>/results.json")
    sub.add_parser("list", help="scenarios and routers")
    md = sub.add_parser("median", help="medians of runs already made (results.json files of one scenario)")
    md.add_argument("out", help="directory for the combined results.json and report.md")
    md.add_argument("results", nargs="+")
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["epp-overhead"]:  # every flag after the word is its own parser's
        from . import epp_overhead
        return epp_overhead.main(argv[1:])
    if argv[:1] == ["pinned"]:
        from . import pinned
        return pinned.main(argv[1:])
    a = ap.parse_args(argv)
    stop_on_signals()

    if a.cmd == "list":
        from testbed import scenario

        from . import routers
        for path in sorted(glob.glob(os.path.join(HERE, "scenarios", "*.yaml"))):
            s = scenario.load(path)
            print(f"{os.path.relpath(path, ROOT)}: {s.description.strip().splitlines()[0] if s.description else ''}")
        print("routers: " + ", ".join(routers.KNOWN) + ", epp:PATH")
        return 0
    if a.cmd == "plot":
        from . import harness
        print(harness.replot(a.results))
        return 0
    if a.cmd == "median":
        from . import repeat
        print(repeat.recombine(a.results, a.out))
        return 0
    if a.cmd == "overhead":
        from . import overhead
        return overhead.main(a)

    from testbed import scenario

    from . import harness, report
    path = a.scenario
    if not os.path.exists(path):
        path = os.path.join(HERE, "scenarios", a.scenario + ("" if a.scenario.endswith(".yaml") else ".yaml"))
    try:
        s = scenario.load(path, quick=a.quick)
    except (OSError, scenario.ScenarioError) as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    a.routers = [x for x in a.routers.split(",") if x]
    a.plots = a.plots or ("auto" if a.quick else "install")
    try:
        if a.repeat > 1:
            from . import repeat
            res, outdir = repeat.run(s, a, a.repeat)
        else:
            res, outdir = harness.run(s, a)
    except KeyboardInterrupt as e:
        print(f"\nbench: stopped ({e}); every child was stopped", file=sys.stderr)
        return 130
    except ValueError as e:
        print(f"bench: {e}", file=sys.stderr)
        return 2
    print("\n" + report.markdown(res))
    print(f"\n(wrote {os.path.relpath(outdir, ROOT)}/results.json and report.md)")
    bad = [n for n, r in res["routers"].items() if r["status"] == "failed"]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
