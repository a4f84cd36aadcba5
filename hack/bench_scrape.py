#!/usr/bin/env python3
"""CPU cost of epp's metrics scraping: stand-in pods serving a vLLM-sized /metrics page (the
stand-in gauges plus ~40 KB of vLLM histogram series such as
vllm:time_to_first_token_seconds_bucket{le=...}), epp with --refresh-metrics-interval 50ms and no
requests at all; epp's CPU time (utime+stime from /proc/<pid>/stat) over a window, as % of one core.

    .venv/bin/python hack/bench_scrape.py [--endpoints 8,64] [--window 15] [--settle 5] [--metrics-kb 40]

The pods count the /metrics pages they serve, so the achieved scrape rate is checked against the
configured one (a scraper that quietly fell behind would look cheap). Goal (issue 2): < 10% of one
core at 64 endpoints. Prints a markdown table and writes out/bench_scrape.json. Children are killed
on exit, on signals and if this process dies.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import time

from testbed.children import STOPPED, Children, bounded_run
from testbed.endpoints import write_endpoints
from testbed.epp import start_epp
from testbed.instant_pods import pod_stats, start_pods
from testbed.ports import free_port
from testbed.procstat import cpu_seconds
from testbed.pyspy import find_py_spy, summarize_raw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_interval(s: str) -> float:
    s = s.strip()
    for suffix, mult in (("ms", 1e-3), ("s", 1.0)):
        if s.endswith(suffix):
            return float(s[:-len(suffix)]) * mult
    return float(s)


def measure(kids: Children, ports: list[int], n: int, a, pods_pid: int) -> dict:
    efile = os.path.join(kids.logdir, f"endpoints-{n}.yaml")
    write_endpoints(efile, ports[:n], {"app": "sim"})
    epp = start_epp(kids, efile, free_port(), a.interval, name=f"epp-{n}")
    try:
        time.sleep(a.settle)  # start-up, first connections, imports done
        if epp.poll() is not None:
            raise RuntimeError(f"epp exited with {epp.returncode} (log {kids.logdir}/epp-{n}.log)")
        spy = None
        raw = os.path.join(kids.logdir, f"py-spy-scrape-{n}.txt")
        if a.py_spy:
            exe = find_py_spy()
            if exe:  # samples the same window (its own overhead lands in py-spy, not in epp)
                spy = kids.start(f"py-spy-{n}", [exe, "record", "-p", str(epp.pid), "-d", str(int(a.window)), "-r", "200",
                                                 "--format", "raw", "-o", raw, "--nonblocking"])
        c0, p0, t0, s0 = cpu_seconds(epp.pid), cpu_seconds(pods_pid), time.monotonic(), pod_stats(kids)
        per_second = []
        last_c, last_t = c0, t0
        while time.monotonic() - t0 < a.window:
            time.sleep(1.0)
            c, t = cpu_seconds(epp.pid), time.monotonic()
            per_second.append((c - last_c) / (t - last_t))
            last_c, last_t = c, t
        c1, p1, t1 = cpu_seconds(epp.pid), cpu_seconds(pods_pid), time.monotonic()
        time.sleep(0.6)  # the pods write their counters every 0.5 s
        s1 = pod_stats(kids)
        wall = t1 - t0
        served = (s1.get("metrics_served", 0) - s0.get("metrics_served", 0)) / max(1e-9, s1.get("t", 1) - s0.get("t", 0))
        expected = n / parse_interval(a.interval)
        profile = None
        if spy is not None:
            deadline = time.time() + 10
            while spy.poll() is None and time.time() < deadline:
                time.sleep(0.1)
            kids.stop(spy)
            profile = summarize_raw(raw, 12) if os.path.exists(raw) else None
        return {"profile": profile,"endpoints": n, "window_s": wall, "epp_cpu_frac": (c1 - c0) / wall,
                "epp_cpu_frac_1s_median": statistics.median(per_second) if per_second else None,
                "epp_cpu_frac_1s_max": max(per_second) if per_second else None,
                "pods_cpu_frac": (p1 - p0) / wall, "scrapes_per_s": served, "expected_scrapes_per_s": expected,
                "page_bytes": s1.get("page_bytes"),
                "us_per_scrape": (c1 - c0) / (served * wall) * 1e6 if served else None}
    finally:
        kids.stop(epp)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--endpoints", default="8,64")
    ap.add_argument("--interval", default="50ms", help="epp --refresh-metrics-interval")
    ap.add_argument("--metrics-kb", type=float, default=40, help="vLLM histogram lines added to each page (KB)")
    ap.add_argument("--settle", type=float, default=5.0, help="seconds before the window opens")
    ap.add_argument("--window", type=float, default=15.0, help="seconds of measurement")
    ap.add_argument("--repeats", type=int, default=1, help="windows per pool size (fresh epp each)")
    ap.add_argument("--py-spy", action="store_true", help="sample epp with py-spy during the window (adds a profile)")
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "bench_scrape.json"))
    a = ap.parse_args()
    sizes = [int(s) for s in a.endpoints.split(",")]
    results = []
    with bounded_run(60 + len(sizes) * a.repeats * (a.settle + a.window + 15), "epp-scrape-") as kids:
        try:
            pods, ports = start_pods(kids, max(sizes), a.metrics_kb)
            time.sleep(1.0)
            for n in sizes:
                for rep in range(a.repeats):
                    r = measure(kids, ports, n, a, pods.pid)
                    r["repeat"] = rep
                    results.append(r)
                    print(f"{n} endpoints: epp {r['epp_cpu_frac'] * 100:.1f}% of a core, {r['scrapes_per_s']:.0f} "
                          f"scrapes/s (expected {r['expected_scrapes_per_s']:.0f}), page {r['page_bytes']} B", flush=True)
        except STOPPED as e:
            print(f"stopped: {e!r} (logs in {kids.logdir})", file=sys.stderr)
            return 1
    logdir = kids.logdir
    lines = [f"## epp scrape cost, idle (no requests), --refresh-metrics-interval {a.interval}, "
             f"/metrics page {results[0]['page_bytes'] / 1024:.1f} KB", "",
             "| endpoints | epp CPU (% of one core) | median 1 s window | max 1 s window | scrapes/s (expected) | CPU per scrape | goal |",
             "|---:|---:|---:|---:|---:|---:|---|"]
    for n in sizes:
        rs = [r for r in results if r["endpoints"] == n]
        cpu = statistics.median(r["epp_cpu_frac"] for r in rs)
        goal = ("< 10%: " + ("met" if cpu < 0.10 else "MISSED")) if n >= 64 else ""
        r = rs[len(rs) // 2]
        lines.append(f"| {n} | {cpu * 100:.1f}% | {r['epp_cpu_frac_1s_median'] * 100:.1f}% | {r['epp_cpu_frac_1s_max'] * 100:.1f}% | "
                     f"{r['scrapes_per_s']:.0f} ({r['expected_scrapes_per_s']:.0f}) | "
                     f"{(r['us_per_scrape'] or float('nan')):.0f} us | {goal} |")
    lines.append("\n(pods process, for reference: " + ", ".join(
        f"{r['endpoints']} endpoints {r['pods_cpu_frac'] * 100:.0f}%" for r in results) + " of a core serving the pages)")
    for r in results:
        pr = r.get("profile")
        if pr:
            lines += ["", f"### py-spy of idle epp, {r['endpoints']} endpoints ({pr['samples']} samples)", "",
                      "| self % | function | | incl % | function |", "|---:|---|---|---:|---|"]
            for (fs, _, ps), (fi, _, pi) in zip(pr["self"], pr["inclusive"]):
                lines.append(f"| {ps * 100:.1f} | {fs} | | {pi * 100:.1f} | {fi} |")
    text = "\n".join(lines)
    print("\n" + text)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"args": vars(a), "results": results}, f, indent=1)
    print(f"\n(wrote {a.out})")
    shutil.rmtree(logdir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
