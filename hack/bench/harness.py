"""One run of a scenario: for each router, a fresh pool, the router in front of it, the stages in order,
then everything stopped. Routers that cannot run here get a row that says why."""
from __future__ import annotations

import asyncio
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import time

import aiohttp

from testbed import aio
from testbed.children import Children
from testbed.procstat import cpu_model

from . import ROOT
from . import agentic, events as eventsmod, loadgen, pool as poolmod, report, routers
from testbed.scenario import Scenario, stages, tenant_rates
from .sysmon import Monitor
from testbed.workload import Workload


async def wait_ready(http: aiohttp.ClientSession, url: str, model: str, proc_pids: dict, timeout: float = 60.0) -> None:
    """Until a small request through the router answers 200 (peers 503 until their health checks pass)."""
    body = {"model": model, "prompt": "ready check", "max_tokens": 1}
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            async with http.post(url + "/v1/completions", json=body, timeout=aiohttp.ClientTimeout(total=10)) as r:
                if r.status == 200:
                    return
                last = f"http {r.status}: {(await r.read())[:200]!r}"
        except (aiohttp.ClientError, OSError, asyncio.TimeoutError) as e:
            last = repr(e)
        await asyncio.sleep(0.3)
    raise RuntimeError(f"router not answering after {timeout:.0f}s: {last}")


async def settle_kv_events(http: aiohttp.ClientSession, running: routers.Running, pool, timeout: float = 60.0) -> None:
    """Until epp has heard KV events from every pod. A pod's publisher connects on its own schedule and
    drops what it publishes before, so each pod gets small direct requests until epp counts it."""
    deadline = time.monotonic() + timeout
    i = 0
    while time.monotonic() < deadline:
        if all(routers.epp_sample(port, "epp_kv_event_publishers") >= len(pool.addresses)
               for port in running.epp_metrics_all):
            return
        for a in pool.addresses:
            i += 1
            body = {"model": pool.model, "prompt": f"kv events warm-up {i} " * 8, "max_tokens": 1}
            async with http.post(f"http://{a}/v1/completions", json=body) as r:
                await r.read()
        await asyncio.sleep(0.3)
    raise RuntimeError("KV events did not reach epp from every pod")


async def _inference_perf(s: Scenario, name: str, running, pool, groups: dict, http, opts) -> tuple[list, float]:
    """All stages by inference-perf in one process: CPU and the hit rate are for the whole run."""
    from . import inferenceperf
    mon = Monitor(groups)
    before = await poolmod.scrape(http, pool.addresses)
    snap0 = mon.snapshot()
    sampler = asyncio.create_task(mon.run())
    timeout = (s.load.duration_s + s.load.drain_timeout_s) / s.pool.time_scale * len(stages(s)) + 300
    try:
        summaries = await asyncio.to_thread(inferenceperf.run, s, running.url,
                                            os.path.join(opts.outdir, "inference-perf", name), opts.install, timeout)
    finally:
        sampler.cancel()
    cpu = mon.summary(snap0, mon.snapshot())
    after = await poolmod.scrape(http, pool.addresses)
    q = sum(a["queries"] - b["queries"] for a, b in zip(after, before))
    for st in summaries:
        st["cpu"] = cpu
    return summaries, (round(sum(a["hits"] - b["hits"] for a, b in zip(after, before)) / q, 4) if q else float("nan"))


def _queues(running) -> dict | None:
    """epp's flow-control queue-time histograms (None for a router without them)."""
    if not running.epp_metrics:
        return None
    try:
        return routers.epp_queue_histograms(running.epp_metrics)
    except OSError:
        return None


def _start_pool(kids: Children, s: Scenario, name: str, tries: int = 3):
    """The scenario's pool; started again (new ports) when a sim lost its port to another process on a
    shared machine between the harness choosing it and the sim binding it."""
    for attempt in range(tries):
        try:
            return poolmod.start(kids, s.pool, name, kv_endpoints=s.router_replicas, respawn=eventsmod.needs_respawn(s))
        except RuntimeError as e:
            log = kids.log(f"{name}-pool")
            text = open(log, errors="replace").read() if os.path.exists(log) else ""
            if attempt + 1 == tries or "address already in use" not in text:
                raise
            print(f"  {name}: a sim's port was taken ({e}); starting the pool again", flush=True)
            for n, p in list(kids.procs):
                if n == f"{name}-pool":
                    kids.stop(p)
    raise RuntimeError("unreachable")


async def run_router(s: Scenario, name: str, kids: Children, opts) -> dict:
    ts = s.pool.time_scale
    ld = s.load
    out: dict = {"status": "ok", "stages": []}
    t0 = time.time()
    pool = _start_pool(kids, s, routers.file_label(name))
    running = None
    try:
        running = routers.start(kids, name, pool, install=opts.install, envoy_concurrency=opts.envoy_concurrency,
                                epp_args=s.epp_args, replicas=s.router_replicas)
        out["info"] = running.info
        async with loadgen.session(ld.request_timeout_s / ts) as http:
            await wait_ready(http, running.url, s.pool.model, running.pids)
            if running.epp_metrics and routers.needs_kv_events(name):
                await settle_kv_events(http, running, pool)
            render0 = await poolmod.render_calls(http, pool.addresses)
            sessions = ld.mode == "sessions"
            wl = agentic.AgenticWorkload(s) if sessions else Workload(s)
            url = running.url + ("/v1/chat/completions" if s.workload.api == "chat" else "/v1/completions")
            if ld.warmup_requests and not sessions:
                first = stages(s)[0]
                level = first * ts if ld.mode == "poisson" else first
                await loadgen.run_stage(http, url, wl, ld.mode, level, 1e9, ld.warmup_requests, ld.drain_timeout_s / ts,
                                        s.workload.seed + 999, f"{name} warm-up")
            groups = {"sims": pool.sim_pids(), **{k: [v] for k, v in running.pids.items()}}
            if opts.client == "inference-perf":
                out["stages"], out["info"]["run_hit_rate"] = await _inference_perf(s, name, running, pool, groups, http, opts)
            for i, level in enumerate(stages(s) if opts.client == "bench" else []):
                mon = Monitor(groups)
                before = await poolmod.scrape(http, pool.addresses)
                queue0 = _queues(running) if s.workload.tenants else None
                snap0 = mon.snapshot()
                sampler = asyncio.create_task(mon.run())
                wall_level = level * ts if ld.mode != "concurrency" else level
                side = eventsmod.StageEvents(s, i + 1, pool, http, lambda seed: Workload(s))
                side.start()
                try:
                    if sessions:
                        st = await agentic.run_stage(http, url, wl, wall_level, ld.duration_s / ts,
                                                     ld.drain_timeout_s / ts, s.workload.seed + i,
                                                     f"{name} sessions/s {level:g}", s.workload.turns,
                                                     s.workload.think_s / ts)
                    else:
                        st = await loadgen.run_stage(http, url, wl, ld.mode, wall_level, ld.duration_s / ts,
                                                     ld.max_requests, ld.drain_timeout_s / ts, s.workload.seed + i,
                                                     f"{name} {'rate' if ld.mode == 'poisson' else 'concurrency'} "
                                                     f"{level:g}",
                                                     tenants=tenant_rates(s, i) if s.workload.tenants else None,
                                                     on_s=ld.on_s / ts, off_s=ld.off_s / ts)
                finally:
                    await side.stop()
                snap1 = mon.snapshot()
                sampler.cancel()
                after = await poolmod.scrape(http, pool.addresses)
                summary = report.summarize(st, before, after, mon.summary(snap0, snap1), ts, level, ld.mode)
                if s.workload.tenants:
                    summary["tenants"] = report.tenants(st, s.workload.tenants, ts, queue0, _queues(running))
                if side.active:
                    summary["events"] = side.summary()
                out["stages"].append(summary)
                print(f"  {name} {level:g}: {summary['completed']}/{summary['sent']} ok, "
                      f"{summary['output_tok_per_s']:.0f} out tok/s, TTFT p90 {summary['ttft_p90_s']:.3f} s, "
                      f"hit rate {summary['hit_rate']:.1%}, machine {summary['cpu']['machine_busy']:.0%} busy"
                      + (f" CPU-BOUND ({summary['cpu']['why']})" if summary["cpu"]["cpu_bound"] else ""), flush=True)
            out["render_calls"] = await poolmod.render_calls(http, pool.addresses) - render0
    except routers.Unavailable as e:
        out = {"status": "unavailable", "reason": str(e), "stages": []}
    except (RuntimeError, TimeoutError, OSError, aiohttp.ClientError) as e:
        out = {"status": "failed", "reason": f"{type(e).__name__}: {e}"[:300], "stages": out["stages"],
               "logs": kids.logdir}
    finally:
        if running:
            for pid in running.pids.values():
                for _, p in list(kids.procs):
                    if p.pid == pid:
                        kids.stop(p)
        kids.stop(pool.proc)
    out["wall_s"] = time.time() - t0
    print(f"  {name}: {out['status']} {out.get('reason', '')} ({out['wall_s']:.0f} s)", flush=True)
    return out


def make_plots(res_path: str, res: dict, mode: str) -> None:
    """In-process when matplotlib imports; else with out/bench-venvs/matplotlib (installed unless mode is
    'auto', which only uses what is there)."""
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "plot.py")
    if mode == "never":
        res["plots_note"] = "skipped (--plots never)"
        return
    try:
        from . import plot
        res["plots"] = [os.path.basename(p) for p in plot.plot(res_path)]
        return
    except ImportError:
        pass
    try:
        py, _ = routers.peer_python("matplotlib", install=(mode == "install"))
        r = subprocess.run([py, here, res_path], capture_output=True, text=True, timeout=300)
        if r.returncode:
            res["plots_note"] = f"plot failed: {r.stderr.strip()[-200:]}"
        else:
            res["plots"] = [os.path.basename(p) for p in r.stdout.split()]
    except routers.Unavailable as e:
        res["plots_note"] = f"skipped: matplotlib not importable ({e})"


def machine() -> dict:
    return {"cpus": os.cpu_count(), "cpu": cpu_model() or platform.processor(), "python": sys.version.split()[0],
            "loadavg_start": os.getloadavg()}


def run(s: Scenario, opts) -> tuple[dict, str]:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    outdir = opts.out or os.path.join(ROOT, "out", "bench", f"{s.name}-{stamp}")
    opts.outdir = outdir
    os.makedirs(outdir, exist_ok=True)
    logdir = os.path.join(outdir, "logs")
    os.makedirs(logdir, exist_ok=True)
    kids = Children(logdir)
    names = opts.routers or s.routers
    for n in names:
        routers.check(n)
    res = {"scenario": {**dataclasses.asdict(s), "quick": opts.quick}, "client": opts.client, "started": stamp, "machine": machine(),
           "routers": {}}
    wall_stage = s.load.duration_s / s.pool.time_scale
    print(f"{s.name}: {len(names)} routers x {len(stages(s))} stages of ~{wall_stage:.0f} wall s "
          f"(time scale {s.pool.time_scale:g}); results in {os.path.relpath(outdir, ROOT)}", flush=True)
    try:
        for n in names:
            print(f"# {n}", flush=True)
            try:
                res["routers"][n] = aio.run(run_router(s, n, kids, opts))
            except (RuntimeError, TimeoutError, OSError) as e:     # the pool did not start
                res["routers"][n] = {"status": "failed", "reason": f"{type(e).__name__}: {e}"[:300], "stages": []}
                print(f"  {n}: failed: {e}", flush=True)
    finally:
        kids.stop_all()
    res["finished"] = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    write(os.path.join(outdir, "results.json"), res, opts.plots)
    return res, outdir


def write(path: str, res: dict, plots: str) -> None:
    """results.json, the plots beside it, then report.md (which names the plots)."""
    with open(path, "w") as fh:
        json.dump(res, fh, indent=1, default=str)
    res.pop("plots", None)
    res.pop("plots_note", None)
    make_plots(path, res, plots)
    with open(path, "w") as fh:
        json.dump(res, fh, indent=1, default=str)
    with open(os.path.join(os.path.dirname(path), "report.md"), "w") as fh:
        fh.write(report.markdown(res) + "\n")


def replot(path: str) -> str:
    with open(path) as fh:
        res = json.load(fh)
    write(path, res, "install")
    return report.markdown(res)
