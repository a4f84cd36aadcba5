"""Overhead of epp on the request path: the same load through Envoy straight to one backend
(`direct` listener, no ext_proc) and through Envoy + epp (FULL_DUPLEX_STREAMED ext_proc), on loopback.

    hack/bench.sh epp-overhead [--quick] [--sizes 1,16,256] [--endpoints 8,64]
    (.venv/bin/python -m hack.bench.epp_overhead ..., from the repository root)

One Envoy carries both listeners; stand-in pods (one asyncio process, N = 8 and 64 endpoints) answer
at once; epp is restarted per N. For each prompt size it measures:

- added latency: p50/p99 of Envoy+epp minus Envoy-direct, open loop at --rate (200 req/s, Poisson
  with the same seed for both paths), direct and epp runs alternated (order flipped every repeat) so
  machine noise hits both; medians over --reps repeats;
- sustained rate: open-loop rates ramped geometrically until errors appear, p99 explodes (> 5x the
  200 req/s p99 and > +20 ms) or throughput falls behind the offered rate; the last good rate,
  median over repeats, for epp and (once per size) for direct;
- epp CPU per request (from /proc, idle scraping subtracted) -> decisions/s on one core, and an
  in-process figure: RequestStream fed serialized ProcessingRequests (no HTTP/2, no Envoy).

The load generator is asyncio (uvloop) on raw keep-alive HTTP/1.1 connections in this process; its
own CPU and timer lag are measured and results where it was the bottleneck are flagged. Every
prompt starts with a unique request number, so each request is a prefix-cache miss (worst case
for the prefix index). Prints markdown tables; writes out/bench_overhead.json. All children are
killed on exit, on signals, and (PR_SET_PDEATHSIG) if this process dies.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import math
import os
import shutil
import sys
import time

from testbed.aio import run
from testbed.children import STOPPED, Children, bounded_run
from testbed.endpoints import write_endpoints
from testbed.envoy import bootstrap, find_envoy, start_envoy
from testbed.epp import start_epp
from testbed.http1 import Target
from testbed.instant_pods import start_pods
from testbed.ports import free_port
from testbed.procstat import cpu_model, cpu_seconds
from testbed.pyspy import find_py_spy, summarize_raw

from . import ROOT
from .inproc import micro_decisions
from .openloop import Payload, Procs, run_load
from .rates import fixed_rate, fmt, ramp

perf = time.perf_counter


async def profile_epp(a, kids: Children, target: Target, epp_pid: int, size: int, procs: Procs) -> dict:
    spy = find_py_spy()
    if not spy:
        return {"error": "py-spy not installed (.venv/bin/pip install py-spy)"}
    raw = os.path.join(kids.logdir, f"py-spy-{epp_pid}-{size}.txt")
    rate = a.profile_rate
    p = kids.start(f"py-spy-{size}", [spy, "record", "-p", str(epp_pid), "-d", str(int(a.py_spy)), "-r", "200",
                                      "--format", "raw", "-o", raw, "--nonblocking"])
    await asyncio.sleep(0.5)
    r = await run_load(target, Payload(size * 1024), rate, int(rate * a.py_spy), 77, a.arrival, procs)
    for _ in range(100):
        if p.poll() is not None:
            break
        await asyncio.sleep(0.1)
    kids.stop(p)
    if not os.path.exists(raw):
        return {"error": f"py-spy wrote nothing (see {kids.logdir}/py-spy-{size}.log)"}
    out = summarize_raw(raw)
    out.update(size_kb=size, rate=rate, requests=r["ok"], epp_cpu_frac=r["cpu_s"]["epp"] / r["wall_s"])
    return out


def report(res: dict) -> str:
    a = res["args"]
    lines = [f"## epp overhead (Envoy+epp FULL_DUPLEX_STREAMED vs Envoy direct), {a['rate']:.0f} req/s {a['arrival']}, "
             f"{a['count']} req/run, median of {a['reps']} runs, {a['prompts']} prompts"
             + (f", epp {' '.join(a['epp_arg'])}" if a['epp_arg'] else ""),
             "", "| endpoints | prompt | direct p50 | direct p99 | epp p50 | epp p99 | added p50 | added p99 | p50 ratio | p99 ratio | epp CPU/req | errors | other load |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for n, ph in res["phases"].items():
        for size, r in ph["fixed"].items():
            lines.append(f"| {n} | {size} KB | {fmt(r['direct_p50_ms'])} ms | {fmt(r['direct_p99_ms'])} ms | {fmt(r['epp_p50_ms'])} ms | "
                         f"{fmt(r['epp_p99_ms'])} ms | {fmt(r['added_p50_ms'], '+.2f')} ms | {fmt(r['added_p99_ms'], '+.2f')} ms | "
                         f"{fmt(r['epp_p50_ms'] / r['direct_p50_ms'])}x | {fmt(r['epp_p99_ms'] / r['direct_p99_ms'])}x | "
                         f"{fmt(r['epp_cpu_us_per_req'], '.0f')} us | {r['errors']} | {r['foreign_cpu_frac'] * 100:.0f}% |")
    lines += ["", f"## highest sustained rate (open-loop ramp x{a['ramp_factor']}, {a['step_seconds']} s steps, "
              f"median of {a['ramp_reps']} ramps; good = no errors, p99 <= max(5x base, base+20 ms), throughput >= 95%)", "",
              "| endpoints | prompt | epp last good | direct last good | ratio | CPU at epp's last good (epp / envoy / pods / loadgen / other load, % of a core) | stopped because |",
              "|---:|---:|---:|---:|---:|---|---|"]
    for n, ph in res["phases"].items():
        for size, r in ph.get("ramp", {}).items():
            d = res["direct_ramp"].get(size, {}).get("last_good_rps", math.nan)
            cpu = next((x["cpu_at_last_good"] for x in reversed(r["reps"]) if x["cpu_at_last_good"]), None) or {}
            c = " / ".join(f"{cpu.get(k, math.nan) * 100:.0f}" for k in ("epp", "envoy", "pods", "loadgen", "foreign")) if cpu else "n/a"
            why = r["reps"][len(r["reps"]) // 2]["why"] if r["reps"] else ""
            flag = " (load generator bound)" if r["loadgen_bound"] else ""
            lines.append(f"| {n} | {size} KB | {fmt(r['last_good_rps'], '.0f')} req/s{flag} | {fmt(d, '.0f')} req/s | "
                         f"{fmt(r['last_good_rps'] / d if d else math.nan)} | {c} | {why} |")
    lines += ["", "## decisions per second on one core", "",
              "| endpoints | prompt | end-to-end (1 / epp CPU per request at 200 req/s) | in-process RequestStream (no transport) |",
              "|---:|---:|---:|---:|"]
    for n, ph in res["phases"].items():
        for size, r in ph["fixed"].items():
            m = next((x for x in res["micro"] if x["endpoints"] == int(n) and x["size_kb"] == size), None)
            e2e = 1e6 / r["epp_cpu_us_per_req"] if r["epp_cpu_us_per_req"] else math.nan
            lines.append(f"| {n} | {size} KB | {fmt(e2e, '.0f')} /s | {fmt(m['decisions_per_s'] if m else math.nan, '.0f')} /s |")
    lines += ["", "idle epp CPU (scraping only): " + ", ".join(
        f"{n} endpoints {ph['idle_epp_cpu_frac'] * 100:.1f}%" for n, ph in res["phases"].items()) + " of a core"]
    lg = max((r["loadgen_cpu_frac"] for ph in res["phases"].values() for r in ph["fixed"].values()), default=0)
    lag = max((r["lag_p99_ms"] for ph in res["phases"].values() for r in ph["fixed"].values()), default=0)
    lines.append(f"load generator at {a['rate']:.0f} req/s: max CPU {lg * 100:.0f}% of a core, timer lag p99 <= {lag:.2f} ms"
                 + (" (CPU-BOUND: latency figures are suspect)" if lg > 0.8 else ""))
    lines.append(f"machine: {os.cpu_count()} CPUs, {res['machine']}; 'other load' = machine-wide busy CPU minus "
                 f"Envoy, epp, the pods and the load generator (other work sharing the machine)")
    for n, ph in res["phases"].items():
        for size, pr in ph.get("profile", {}).items():
            if "self" not in pr:
                lines.append(f"\nprofile {n} endpoints {size} KB: {pr.get('error')}")
                continue
            lines += ["", f"### py-spy of epp: {n} endpoints, {size} KB, {pr['rate']:.0f} req/s, {pr['samples']} samples "
                      f"(epp at {pr['epp_cpu_frac'] * 100:.0f}% of a core)", "", "| self % | function | | incl % | function |", "|---:|---|---|---:|---|"]
            for (fs, _, ps), (fi, _, pi) in zip(pr["self"], pr["inclusive"]):
                lines.append(f"| {ps * 100:.1f} | {fs} | | {pi * 100:.1f} | {fi} |")
    return "\n".join(lines)


async def bench(a, kids: Children) -> dict:
    find_envoy()  # before anything starts: a missing binary stops the run at once
    max_n = max(a.endpoints)
    pods_proc, ports = start_pods(kids, max_n + 1, a.metrics_kb)
    direct_port = ports[-1]       # the direct path's backend: a pod of its own, in the same process
    pool_ports = ports[:-1]
    grpc_port = free_port()
    direct_l, epp_l = free_port(), free_port()
    envoy = start_envoy(kids, "envoy", bootstrap(free_port(), {"FULL_DUPLEX_STREAMED": epp_l, "direct": direct_l},
                                                  epp_port=grpc_port, direct_backend=direct_port),
                        [epp_l, direct_l], a.envoy_concurrency)
    procs = Procs()
    procs.pids = {"envoy": envoy.pid, "pods": pods_proc.pid}
    targets = {"direct": Target("direct", direct_l), "epp": Target("epp", epp_l)}
    res = {"phases": {}, "direct_ramp": {}, "micro": []}
    res["machine"] = cpu_model() or "?"
    for n in a.endpoints:
        efile = os.path.join(kids.logdir, f"endpoints-{n}.yaml")
        write_endpoints(efile, pool_ports[:n], {"app": "sim"})
        epp = start_epp(kids, efile, grpc_port, a.refresh, extra=a.epp_arg, name=f"epp-{n}")
        procs.pids["epp"] = epp.pid
        try:
            print(f"# {n} endpoints (epp pid {epp.pid})", flush=True)
            targets["epp"].idle = []  # Envoy reconnects to the new epp; start from fresh client connections too
            # wait until epp answers through Envoy
            deadline = time.time() + 20
            while True:
                w = await run_load(targets["epp"], Payload(1024), 100.0, 5, 1, "even", procs, timeout=3)
                if not w["errors"]:
                    break
                if time.time() > deadline:
                    raise RuntimeError(f"epp does not answer through Envoy: {w['codes']}")
                await asyncio.sleep(0.3)
            await asyncio.sleep(0.5)
            c0, t0 = cpu_seconds(epp.pid), perf()
            await asyncio.sleep(a.idle_seconds)
            idle = (cpu_seconds(epp.pid) - c0) / (perf() - t0)
            ph = {"idle_epp_cpu_frac": idle}
            ph["fixed"] = await fixed_rate(a, targets, a.sizes, procs, idle)
            if a.ramp_reps > 0:
                ph["ramp"] = {}
                for size in a.sizes:
                    if size not in res["direct_ramp"]:
                        res["direct_ramp"][size] = await ramp(a, targets["direct"], size, ph["fixed"][size]["direct_p99_ms"], procs,
                                                         factor=max(a.ramp_factor, 1.5))  # a reference: coarser steps
                        print(f"  {size:>3} KB  direct sustains {fmt(res['direct_ramp'][size]['last_good_rps'], '.0f')} req/s "
                              f"({res['direct_ramp'][size]['reps'][0]['why']})", flush=True)
                    r = ph["ramp"][size] = await ramp(a, targets["epp"], size, ph["fixed"][size]["epp_p99_ms"], procs)
                    print(f"  {size:>3} KB  epp sustains {fmt(r['last_good_rps'], '.0f')} req/s ({r['reps'][0]['why']})", flush=True)
            if a.py_spy:
                ph["profile"] = {}
                for size in a.sizes:
                    pr = ph["profile"][size] = await profile_epp(a, kids, targets["epp"], epp.pid, size, procs)
                    print(f"  profiled epp at {a.profile_rate:.0f} req/s, {size} KB: {pr.get('samples', pr.get('error'))} samples", flush=True)
            res["phases"][str(n)] = ph
        finally:
            for c in targets["epp"].idle:
                c.close()
            kids.stop(epp)
    for n in a.endpoints:
        for size in a.sizes:
            try:
                m = micro_decisions(n, size * 1024, a.micro_seconds)
            except Exception as e:  # epp's internals moved: the end-to-end figures stand on their own
                m = {"endpoints": n, "size_kb": size, "decisions_per_s": math.nan, "error": repr(e)}
            res["micro"].append(m)
            print(f"  in-process: {n} endpoints {size} KB: {fmt(m['decisions_per_s'], '.0f')} decisions/s", flush=True)
    return res


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="hack/bench.sh epp-overhead", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer requests and shorter ramps (< 90 s)")
    ap.add_argument("--sizes", default="1,16,256", help="prompt sizes in KB")
    ap.add_argument("--endpoints", default="8,64", help="pool sizes")
    ap.add_argument("--rate", type=float, default=200.0, help="open-loop rate of the latency runs (req/s)")
    ap.add_argument("--count", type=int, default=None, help="requests per latency run (default 1000; quick 160)")
    ap.add_argument("--reps", type=int, default=None, help="repeats of each latency run (default 5; quick 3)")
    ap.add_argument("--arrival", choices=("poisson", "even"), default="poisson")
    ap.add_argument("--ramp-reps", type=int, default=None, help="ramps per case (default 3; quick 1; 0 = no ramp)")
    ap.add_argument("--ramp-factor", type=float, default=None, help="rate step factor (default 1.25; quick 2)")
    ap.add_argument("--step-seconds", type=float, default=None, help="seconds per ramp step (default 2; quick 0.6)")
    ap.add_argument("--max-rate", type=float, default=20000)
    ap.add_argument("--micro-seconds", type=float, default=None, help="per in-process case (default 2; quick 0.7)")
    ap.add_argument("--idle-seconds", type=float, default=None, help="idle epp CPU window (default 3; quick 1)")
    ap.add_argument("--refresh", default="50ms", help="epp --refresh-metrics-interval")
    ap.add_argument("--metrics-kb", type=float, default=0, help="extra vLLM histogram lines on each pod's /metrics")
    ap.add_argument("--prompts", choices=("unique", "shared"), default="unique",
                    help="unique: every prompt starts differently (prefix-index worst case: every block new, "
                         "LRU evictions); shared: one prefix, unique ending (best case)")
    ap.add_argument("--epp-arg", action="append", default=[], help="extra epp flag, e.g. --epp-arg=--ext-proc-server=grpcio")
    ap.add_argument("--envoy-concurrency", type=int, default=2)
    ap.add_argument("--py-spy", type=float, default=0, help="seconds of py-spy sampling of epp per size (0 = off)")
    ap.add_argument("--profile-rate", type=float, default=400, help="req/s while py-spy samples")
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "bench_overhead.json"))
    a = ap.parse_args(argv)
    q = a.quick
    a.sizes = [int(s) for s in a.sizes.split(",")]
    a.endpoints = [int(s) for s in a.endpoints.split(",")]
    a.count = a.count or (160 if q else 1000)
    a.reps = a.reps or (3 if q else 5)
    a.ramp_reps = (1 if q else 3) if a.ramp_reps is None else a.ramp_reps
    a.ramp_factor = a.ramp_factor or (2.0 if q else 1.25)
    a.step_seconds = a.step_seconds or (0.6 if q else 2.0)
    a.micro_seconds = a.micro_seconds or (0.5 if q else 2.0)
    a.idle_seconds = a.idle_seconds or (1.0 if q else 3.0)
    Payload.shared = a.prompts == "shared"
    t0 = time.time()
    with bounded_run(150 if q else 1800, "epp-bench-") as kids:
        try:
            res = run(bench(a, kids))
        except STOPPED as e:
            print(f"stopped: {e!r} (logs in {kids.logdir})", file=sys.stderr)
            return 1
    logdir = kids.logdir
    res["args"] = {k: v for k, v in vars(a).items() if not k.startswith("_")}
    res["elapsed_s"] = time.time() - t0
    text = report(res)
    print("\n" + text)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump(res, f, indent=1, default=str)
    print(f"\n(wrote {a.out}; {res['elapsed_s']:.0f} s; logs in {logdir})")
    shutil.rmtree(logdir, ignore_errors=True)
    return 0



if __name__ == "__main__":
    sys.exit(main())
