"""The pinned benchmark: closed-loop wrk against each configuration, the proxy under test and the backends
sharing core 0, wrk alone on core 1, every configuration measured in the same run.

    hack/bench.sh pinned [--quick] [--configs direct,envoy,epp,...] [--sizes 16k,256k,1m] [--reps 3]
                         [--sse 256] [--out out/pinned]

Why pinned and closed loop: on a two-core machine an open-loop Python client competes with the proxy for
the same cores, and its own cost moves with the proxy's; here the proxy's core holds only the proxy and
an instant C backend (hack/bench/instant_backend.c), wrk holds the other, so req/s at 16 connections is
what the proxy path sustains on one core, and p50 at 1 connection its latency with nothing queued.
Configurations: hack/bench/pinned_configs.py. For each configuration and prompt size: a warm-up, then
16 connections for --seconds (throughput, p50/p99) and 1 connection for --seconds-c1 (latency), the CPU
of each process group from /proc; --reps rounds, each round every configuration in turn (ratios compare
runs minutes apart, not hours), medians reported. --sse N: the backends answer N SSE chunks (16 KB
prompt) and the report gives epp's and Envoy's CPU per request with and without response-body
processing (epp vs epp-headers). Writes OUT/report.md and OUT/results.json; prints every command.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shlex
import signal
import subprocess
import sys
import time
import urllib.request

from testbed.children import Children, stop_on_signals, watchdog
from testbed.envoy import find_envoy
from testbed.ports import free_port
from testbed.procstat import cpu_model, cpu_times, group_cpu_seconds

from . import ROOT, cbackend, pinned_configs, pinned_report, wrk

PROXY_CORE, CLIENT_CORE = 0, 1
PIN = ["taskset", "-c", str(PROXY_CORE)]
SSE_CONFIGS = ("envoy", "epp", "epp-headers")
QUICK_CONFIGS = "direct,envoy,epp"


def show(path: str) -> str:
    """A path as printed: relative to the repository when inside it."""
    rel = os.path.relpath(path, ROOT)
    return path if rel.startswith("..") else rel


def parse_args(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="hack/bench.sh pinned", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true",
                    help=f"smoke run: 1 rep of 1 s runs, {QUICK_CONFIGS}, 16k only (flags given still win)")
    ap.add_argument("--configs", default=None, help="comma list (default: all of "
                    + ", ".join(pinned_configs.CONFIGS) + ")")
    ap.add_argument("--sizes", default=None, help="comma list of JSON body sizes (default 16k,256k,1m)")
    ap.add_argument("--reps", type=int, default=None, help="rounds (default 3; medians reported)")
    ap.add_argument("--seconds", type=float, default=None, help="each 16-connection run (default 15)")
    ap.add_argument("--seconds-c1", type=float, default=None, help="each 1-connection run (default 10)")
    ap.add_argument("--warmup", type=float, default=None, help="warm-up before each size (default 2 s; 0: none). "
                    "wrk counts whole seconds: every duration is rounded")
    ap.add_argument("--sse", type=int, default=256, help="SSE chunks per answer in the streamed case (0: skip it)")
    ap.add_argument("--sse-gap-us", type=int, default=1000,
                    help="the backend's pause between SSE chunks (default 1 ms: long enough that each chunk reaches "
                         "Envoy on its own, as a real server's tokens do; the report's messages per request shows it)")
    ap.add_argument("--sse-conns", type=int, default=8, help="connections in the streamed case")
    ap.add_argument("--sse-seconds", type=float, default=None, help="each streamed run (default 15)")
    ap.add_argument("--out", default=os.path.join(ROOT, "out", "pinned"))
    ap.add_argument("--no-install", dest="install", action="store_false",
                    help="neither apt-get wrk nor pip-install peers (missing peers are reported unavailable)")
    a = ap.parse_args(argv)
    q = a.quick
    a.configs = [c for c in (a.configs or (QUICK_CONFIGS if q else ",".join(pinned_configs.CONFIGS))).split(",") if c]
    bad = [c for c in a.configs if c not in pinned_configs.CONFIGS]
    if bad:
        ap.error(f"unknown configuration(s) {', '.join(bad)}; known: {', '.join(pinned_configs.CONFIGS)}")
    a.sizes = [s for s in (a.sizes or ("16k" if q else "16k,256k,1m")).split(",") if s]
    a.size_bytes = {s: wrk.parse_size(s) for s in a.sizes}
    a.reps = a.reps or (1 if q else 3)
    a.seconds = a.seconds or (1.0 if q else 15.0)
    a.seconds_c1 = a.seconds_c1 or (1.0 if q else 10.0)
    a.warmup = a.warmup if a.warmup is not None else (0 if q else 2.0)
    a.sse_seconds = a.sse_seconds or (1.0 if q else 15.0)
    a.sse_configs = [c for c in SSE_CONFIGS if c in a.configs] if a.sse else []
    return a


class Run:
    """One benchmark run's state: children, scratch files, the commands it ran, its raw measurements."""

    def __init__(self, a: argparse.Namespace) -> None:
        self.a = a
        self.scratch = os.path.join(a.out, "scratch")
        os.makedirs(os.path.join(a.out, "logs"), exist_ok=True)
        self.kids = Children(os.path.join(a.out, "logs"))
        self.commands: list[str] = []
        self.runs: list[dict] = []
        self.unavailable: dict[str, str] = {}
        self.info: dict[str, dict] = {}
        self.backend_port = 0   # per configuration: what was started (peer package and version)

    def note(self, cmd) -> None:
        text = cmd if isinstance(cmd, str) else shlex.join(cmd)
        self.commands.append(text)
        print(f"$ {text}", flush=True)

    def started(self, procs) -> None:
        for p in procs:
            self.note(p.args)

    @staticmethod
    def backend_counts(port: int) -> dict:
        """The C backend's request counters (process-wide: every port of the process)."""
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/stats", timeout=5) as r:
            return json.loads(r.read())

    def measure(self, proxy, backends_pid: int, conns: int, seconds: float, bodies: list[str], **tags) -> dict:
        """One wrk run against proxy; its results with each process group's CPU over the run."""
        cmd = wrk.command(proxy.url, conns, seconds, bodies, CLIENT_CORE)
        self.note(cmd[:-len(bodies)] + [show(bodies[0]), "..."] if len(bodies) > 1 else cmd)
        groups = {**proxy.groups, "backends": backends_pid}
        served0 = self.backend_counts(self.backend_port)
        msgs0 = proxy.ext_proc_messages()
        cpu0 = {g: group_cpu_seconds(pid) for g, pid in groups.items()}
        core0 = cpu_times(PROXY_CORE)
        kids0 = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.monotonic()
        r = wrk.run(cmd)
        wall = time.monotonic() - t0
        kids1 = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu_s = {g: group_cpu_seconds(pid) - cpu0[g] for g, pid in groups.items()}
        core = {k: v - core0[k] for k, v in cpu_times(PROXY_CORE).items()}
        in_procs = core["user"] + core["nice"] + core["system"]
        served1 = self.backend_counts(self.backend_port)
        msgs1 = proxy.ext_proc_messages()
        r["ext_proc_msgs"] = None if msgs0 is None else {k: msgs1[k] - msgs0[k] for k in msgs0}
        r["backend_served"] = {k: served1[k] - served0[k] for k in served1}
        client_pct = 100 * ((kids1.ru_utime + kids1.ru_stime) - (kids0.ru_utime + kids0.ru_stime)) / wall
        r.update(tags, conns=conns, wall_s=wall, cpu_s=cpu_s,
                 cpu_pct={g: 100 * s / wall for g, s in cpu_s.items()},
                 client_cpu_pct=client_pct,
                 # core 0 beyond our processes: other processes (foreign work), the kernel's own (irq, softirq:
                 # mostly loopback traffic), and time the hypervisor gave someone else (steal)
                 core0_other_pct=max(0.0, 100 * (in_procs - sum(cpu_s.values())) / wall),
                 core0_kernel_pct=100 * (core["irq"] + core["softirq"]) / wall,
                 core0_steal_pct=100 * core["steal"] / wall,
                 client_bound=client_pct > 90)
        print(f"  {tags.get('config')} {tags.get('size')} c={conns}: {r['rps']:.0f} req/s, p50 {r['p50_us'] / 1000:.3f} ms, "
              f"p99 {r['p99_us'] / 1000:.3f} ms, failed {r['failed']}, CPU% "
              + ", ".join(f"{g} {v:.0f}" for g, v in r["cpu_pct"].items())
              + f", wrk {r['client_cpu_pct']:.0f}, other processes on core {PROXY_CORE} {r['core0_other_pct']:.0f}, "
              f"irq {r['core0_kernel_pct']:.0f}, steal {r['core0_steal_pct']:.0f}", flush=True)
        self.runs.append(r)
        return r

    @staticmethod
    def idle(proxy, backends_pid: int, seconds: float) -> dict:
        """Each group's CPU% with no traffic (epp scrapes the backends' /metrics every 50 ms whatever the
        load): at the streamed case's few requests per second it is a visible share of the total."""
        groups = {**proxy.groups, "backends": backends_pid}
        cpu0 = {g: group_cpu_seconds(pid) for g, pid in groups.items()}
        t0 = time.monotonic()
        time.sleep(seconds)
        wall = time.monotonic() - t0
        return {g: 100 * (group_cpu_seconds(pid) - cpu0[g]) / wall for g, pid in groups.items()}

    def warm(self, proxy, bodies: list[str], seconds: float) -> None:
        if seconds > 0:
            cmd = wrk.command(proxy.url, 16, seconds, bodies, CLIENT_CORE)
            wrk.run(cmd)

    def start_config(self, name: str, backends: list[int], tag: str = ""):
        try:
            proxy = pinned_configs.start(self.kids, name, backends, PIN, self.a.install, tag)
        except pinned_configs.Unavailable as e:
            self.unavailable[name] = str(e)
            print(f"  {name}: unavailable: {e}", flush=True)
            return None
        self.started(proxy.procs)
        self.info.setdefault(name, proxy.info)
        return proxy


def sizes_phase(run: Run, binary: str, bodies: dict[str, list[str]]) -> None:
    a = run.a
    ports = [free_port(), free_port()]
    backend = cbackend.start(run.kids, "backends", binary, ports, wrap=PIN)
    run.backend_port = ports[0]
    run.started([backend])
    for rep in range(a.reps):
        for name in a.configs:
            if name in run.unavailable:
                continue
            print(f"# round {rep + 1}/{a.reps}: {name}", flush=True)
            proxy = run.start_config(name, ports)
            if proxy is None:
                continue
            try:
                for size in a.sizes:
                    run.warm(proxy, bodies[size], a.warmup)
                    run.measure(proxy, backend.pid, 16, a.seconds, bodies[size], config=name, size=size, rep=rep)
                    run.measure(proxy, backend.pid, 1, a.seconds_c1, bodies[size], config=name, size=size, rep=rep)
            finally:
                pinned_configs.stop(run.kids, proxy)
    run.kids.stop(backend)


def sse_phase(run: Run, binary: str, bodies: list[str]) -> None:
    a = run.a
    ports = [free_port(), free_port()]
    backend = cbackend.start(run.kids, "backends-sse", binary, ports, a.sse, a.sse_gap_us, wrap=PIN)
    run.backend_port = ports[0]
    run.started([backend])
    for rep in range(a.reps):
        for name in a.sse_configs:
            if name in run.unavailable:
                continue
            print(f"# streamed answers ({a.sse} SSE chunks), round {rep + 1}/{a.reps}: {name}", flush=True)
            proxy = run.start_config(name, ports, tag="-sse")
            if proxy is None:
                continue
            try:
                run.warm(proxy, bodies, a.warmup)
                idle = run.idle(proxy, backend.pid, 1.0 if a.quick else 3.0)
                r = run.measure(proxy, backend.pid, a.sse_conns, a.sse_seconds, bodies, config=name, size="16k",
                                rep=rep, sse=a.sse)
                r["idle_cpu_pct"] = idle
            finally:
                pinned_configs.stop(run.kids, proxy)
    run.kids.stop(backend)


def versions(run: Run) -> dict:
    out = {}
    for name, cmd in (("envoy", [find_envoy(), "--version"]), ("wrk", ["wrk", "--version"])):
        try:
            p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
            text = (p.stdout + p.stderr).strip().splitlines()
            out[name] = text[-1 if name == "envoy" else 0][:160] if text else "?"
        except (OSError, subprocess.SubprocessError):
            out[name] = "?"
    return out


def main(argv: list[str] | None = None) -> int:
    a = parse_args(sys.argv[1:] if argv is None else argv)
    cores = os.sched_getaffinity(0)
    if not {PROXY_CORE, CLIENT_CORE} <= cores:
        print(f"pinned: needs cores {PROXY_CORE} and {CLIENT_CORE} (this process may use {sorted(cores)})",
              file=sys.stderr)
        return 2
    try:
        wrk.ensure_wrk(a.install)
    except wrk.Missing as e:
        print(f"pinned: {e}", file=sys.stderr)
        return 2
    os.makedirs(a.out, exist_ok=True)
    run = Run(a)
    # the harness itself waits on the client's core: nothing of ours but the measured path runs on core 0
    os.sched_setaffinity(0, {CLIENT_CORE})
    load0 = os.getloadavg()
    print(f"load average at start: {load0[0]:.2f} {load0[1]:.2f} {load0[2]:.2f}"
          + ("" if load0[0] < 0.5 else " (not quiet: the numbers are noisy)"), flush=True)
    per_size = a.warmup + a.seconds + a.seconds_c1 + 6
    budget = a.reps * (len(a.configs) * (len(a.sizes) * per_size + 10) + len(a.sse_configs) * (a.sse_seconds + a.warmup + 10))
    stop_on_signals()
    watchdog(2 * budget + 900)   # peers may be pip-installed on first use
    t0 = time.time()
    try:
        binary = cbackend.compile_backend(run.scratch)
        run.note(f"gcc -O2 -Wall -o {show(binary)} {show(cbackend.SOURCE)}")
        bodies = {s: wrk.write_bodies(run.scratch, n) for s, n in a.size_bytes.items()}
        sizes_phase(run, binary, bodies)
        if a.sse_configs:
            sse_phase(run, binary, wrk.write_bodies(run.scratch, 16 << 10, stream=True))
    except (KeyboardInterrupt, RuntimeError, TimeoutError) as e:
        print(f"pinned: stopped: {e!r} (logs in {run.kids.logdir})", file=sys.stderr)
        return 1
    finally:
        signal.alarm(0)
        run.kids.stop_all()
    load1 = os.getloadavg()
    res = {"args": {k: v for k, v in vars(a).items()}, "machine": {
               "cpu": cpu_model(), "cores": os.cpu_count(), "kernel": platform.release(),
               "load_start": load0, "load_end": load1, "quiet": load0[0] < 0.5},
           "versions": versions(run), "configs": run.info, "unavailable": run.unavailable,
           "elapsed_s": time.time() - t0, "commands": run.commands, "runs": run.runs}
    res["summary"] = pinned_report.summarize(run.runs, a.configs, a.sizes)
    res["sse"] = pinned_report.summarize_sse(run.runs)
    text = pinned_report.markdown(res)
    with open(os.path.join(a.out, "results.json"), "w") as f:
        json.dump(res, f, indent=1, default=str)
    with open(os.path.join(a.out, "report.md"), "w") as f:
        f.write(text + "\n")
    print("\n" + text)
    print(f"\n(wrote {show(a.out)}/report.md and results.json; {time.time() - t0:.0f} s)")
    failed = sum(r["failed"] for r in run.runs)
    return 1 if failed or not run.runs else 0
