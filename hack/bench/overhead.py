"""The overhead scenario: what each router adds to a request when the backends answer at once.

The epp-overhead benchmark's pieces (instant stand-in pods in one asyncio process, the raw keep-alive
HTTP/1.1 load generator, the alternated fixed-rate runs and the rate ramp), with every path measured
against the same baseline, a request straight to one pod:

    envoy-rr     Envoy round robin over the pods, no ext_proc
    envoy+epp    Envoy + epp (default profile, FULL_DUPLEX_STREAMED)
    sglang-*     sglang-router, vllm-router (round_robin, cache_aware), when installable

added p50/p99 = the path's latency minus the direct one's (runs alternated, medians over repeats);
sustained = the highest open-loop rate before errors, p99 > 5x its own low-rate p99 (and +20 ms) or
throughput below the offered rate. For epp's own profile of costs (decisions per core, prompt sizes,
64 endpoints) run `hack/bench.sh epp-overhead`.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
import types

from testbed.aio import run
from testbed.children import Children
from testbed.endpoints import write_endpoints
from testbed.envoy import bootstrap
from testbed.epp import start_epp
from testbed.http1 import Target
from testbed.instant_pods import start_pods
from testbed.ports import free_port

from . import ROOT, routers
from .openloop import Procs
from .rates import fixed_rate, fmt, ramp


def settings(quick: bool) -> types.SimpleNamespace:
    return types.SimpleNamespace(rate=200.0, count=160 if quick else 1000, reps=1 if quick else 3, arrival="poisson",
                                 ramp_reps=1, ramp_factor=2.0 if quick else 1.25, step_seconds=0.6 if quick else 2.0,
                                 max_rate=20000)


async def measure(a, path: str, direct: Target, target: Target, pids: dict, size: int) -> dict:
    procs = Procs()
    procs.pids = pids
    fixed = (await fixed_rate(a, {"direct": direct, "epp": target}, [size], procs, 0.0))[size]
    rp = await ramp(a, target, size, fixed["epp_p99_ms"], procs)
    cpu = fixed["envoy_cpu_us_per_req_epp"] + (fixed["epp_cpu_us_per_req"] if pids["epp"] != pids["envoy"] else 0)
    return {"path": path, "p50_ms": fixed["epp_p50_ms"], "p99_ms": fixed["epp_p99_ms"],
            "direct_p50_ms": fixed["direct_p50_ms"], "direct_p99_ms": fixed["direct_p99_ms"],
            "added_p50_ms": fixed["added_p50_ms"], "added_p99_ms": fixed["added_p99_ms"], "errors": fixed["errors"],
            "router_cpu_us_per_req": cpu, "sustained_rps": rp["last_good_rps"], "ramp_stop": rp["reps"][0]["why"],
            "loadgen_bound": rp["loadgen_bound"] or fixed["loadgen_cpu_frac"] > 0.8,
            "other_load_cores": fixed["foreign_cpu_frac"]}


async def bench(a, kids: Children) -> list[dict]:
    s = settings(a.quick)
    pods_proc, ports = start_pods(kids, a.endpoints + 1, 0)
    direct = Target("direct", ports[-1])
    pool = types.SimpleNamespace(addresses=[f"127.0.0.1:{p}" for p in ports[:-1]])
    rows = []
    grpc, rr_l, epp_l = free_port(), free_port(), free_port()
    efile = os.path.join(kids.logdir, "endpoints.yaml")
    write_endpoints(efile, ports[:-1], {"app": "sim"})
    epp = start_epp(kids, efile, grpc)
    cfg = routers.widen_direct(bootstrap(free_port(), {"FULL_DUPLEX_STREAMED": epp_l, "direct": rr_l}, epp_port=grpc,
                                         direct_backend=ports[0]), pool.addresses)
    envoy = routers.start_envoy(kids, "overhead", cfg, epp_l, 2)
    for path, port, pids in (("envoy-rr", rr_l, {"envoy": envoy.pid, "epp": envoy.pid}),
                             ("envoy+epp", epp_l, {"envoy": envoy.pid, "epp": epp.pid})):
        print(f"# {path}", flush=True)
        rows.append(await measure(s, path, direct, Target(path, port), {**pids, "pods": pods_proc.pid}, a.size))
    kids.stop(envoy)
    kids.stop(epp)
    for name in [p for p in a.peers.split(",") if p]:
        print(f"# {name}", flush=True)
        try:
            run = routers.start_peer(kids, name, pool, a.install)
        except routers.Unavailable as e:
            rows.append({"path": name, "unavailable": str(e)})
            continue
        pid = run.pids["router"]
        try:
            rows.append(await measure(s, name, direct, Target(name, int(run.url.rsplit(":", 1)[1])),
                                      {"envoy": pid, "epp": pid, "pods": pods_proc.pid}, a.size))
        except RuntimeError as e:
            rows.append({"path": name, "unavailable": f"failed: {e}"})
        finally:
            for _, p in list(kids.procs):
                if p.pid == pid:
                    kids.stop(p)
    return rows


def table(rows: list[dict], a) -> str:
    lines = [f"## overhead: {a.endpoints} instant pods, {a.size} KB prompts, 200 req/s Poisson, vs a request straight to a pod",
             "", "| path | p50 | p99 | added p50 | added p99 | sustained req/s | router CPU per request | note |",
             "|---|---:|---:|---:|---:|---:|---:|---|"]
    for r in rows:
        if "unavailable" in r:
            lines.append(f"| {r['path']} | | | | | | | unavailable: {r['unavailable']} |")
            continue
        note = "load generator bound" if r["loadgen_bound"] else ""
        lines.append(f"| {r['path']} | {fmt(r['p50_ms'])} ms | {fmt(r['p99_ms'])} ms | {fmt(r['added_p50_ms'], '+.2f')} ms | "
                     f"{fmt(r['added_p99_ms'], '+.2f')} ms | {fmt(r['sustained_rps'], '.0f')} | "
                     f"{fmt(r['router_cpu_us_per_req'], '.0f')} us | {note} |")
    lines.append(f"\ndirect to a pod: p50 {fmt(rows[0].get('direct_p50_ms'))} ms, p99 {fmt(rows[0].get('direct_p99_ms'))} ms. "
                 "sustained: the load generator (one Python process) is also a limit; a row it bounds says so.")
    return "\n".join(lines)


def main(a) -> int:
    logdir = tempfile.mkdtemp(prefix="epp-bench-overhead-")
    kids = Children(logdir)
    t0 = time.time()
    try:
        rows = run(bench(a, kids))
    except (KeyboardInterrupt, RuntimeError, TimeoutError, routers.Unavailable) as e:
        print(f"overhead: stopped: {e!r} (logs in {logdir})")
        return 1
    finally:
        kids.stop_all()
    text = table(rows, a)
    print("\n" + text)
    os.makedirs(os.path.dirname(a.out), exist_ok=True)
    with open(a.out, "w") as f:
        json.dump({"rows": rows, "args": {k: v for k, v in vars(a).items()}, "elapsed_s": time.time() - t0}, f, indent=1,
                  default=str)
    with open(a.out.rsplit(".", 1)[0] + ".md", "w") as f:
        f.write(text + "\n")
    print(f"\n(wrote {os.path.relpath(a.out, ROOT)}; {time.time() - t0:.0f} s)")
    return 0
