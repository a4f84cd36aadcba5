"""The pinned benchmark's summary (medians over rounds) and its markdown tables."""
from __future__ import annotations

import statistics


def _median(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None


def _proxy_groups(run: dict) -> list[str]:
    return [g for g in run["cpu_s"] if g != "backends"]


def _msgs_per_req(runs: list[dict], way: str) -> float | None:
    return _median([r["ext_proc_msgs"][way] / r["requests"] for r in runs if r.get("ext_proc_msgs") and r["requests"]])


def summarize(runs: list[dict], configs: list[str], sizes: list[str]) -> list[dict]:
    """One row per configuration and size: medians over rounds of the 16- and 1-connection runs, and the
    1-connection p50 minus Envoy's in the same round (median of those differences: paired by round, so
    a slow minute moves both)."""
    plain = [r for r in runs if not r.get("sse")]
    envoy_p50 = {(r["size"], r["rep"]): r["p50_us"] for r in plain if r["config"] == "envoy" and r["conns"] == 1}
    rows = []
    for name in configs:
        for size in sizes:
            c16 = [r for r in plain if r["config"] == name and r["size"] == size and r["conns"] == 16]
            c1 = [r for r in plain if r["config"] == name and r["size"] == size and r["conns"] == 1]
            if not c16 and not c1:
                continue
            groups = sorted({g for r in c16 for g in r["cpu_pct"]})
            added = [r["p50_us"] - envoy_p50[(size, r["rep"])] for r in c1 if (size, r["rep"]) in envoy_p50]
            rows.append({
                "config": name, "size": size, "reps": len(c16),
                "rps_c16": _median([r["rps"] for r in c16]),
                "p50_ms_c16": _median([r["p50_us"] / 1000 for r in c16]),
                "p99_ms_c16": _median([r["p99_us"] / 1000 for r in c16]),
                "p50_ms_c1": _median([r["p50_us"] / 1000 for r in c1]),
                "p99_ms_c1": _median([r["p99_us"] / 1000 for r in c1]),
                "added_p50_ms_c1": _median([d / 1000 for d in added]) if added and name != "envoy" else None,
                "cpu_pct_c16": {g: _median([r["cpu_pct"].get(g) for r in c16]) for g in groups},
                "cpu_us_per_req_c16": {g: _median([r["cpu_s"][g] * 1e6 / r["requests"] for r in c16 if r["requests"]])
                                       for g in groups},
                "cpu_us_per_req_c1": {g: _median([r["cpu_s"][g] * 1e6 / r["requests"] for r in c1 if r["requests"]])
                                      for g in groups},
                "proxy_cpu_us_per_req_c16": _median([sum(r["cpu_s"][g] for g in _proxy_groups(r)) * 1e6 / r["requests"]
                                                     for r in c16 if r["requests"]]),
                "client_cpu_pct_c16": _median([r["client_cpu_pct"] for r in c16]),
                "core0_other_pct_max": max((r["core0_other_pct"] + r["core0_steal_pct"] for r in c16 + c1), default=None),
                "core0_kernel_pct_c16": _median([r["core0_kernel_pct"] for r in c16]),
                "client_bound": any(r["client_bound"] for r in c16),
                "failed": sum(r["failed"] for r in c16 + c1),
                "ext_proc_msgs_per_req": _msgs_per_req(c16, "sent"),
                "ext_proc_replies_per_req": _msgs_per_req(c16, "received"),
                "render_per_req": _median([r["backend_served"]["render"] / r["requests"] for r in c16 if r["requests"]]),
            })
    return rows


def _net_us_per_req(r: dict, g: str) -> float | None:
    """CPU microseconds per request of group g, less what it spends with no traffic (its idle CPU% over
    the run's wall time)."""
    if not r["requests"]:
        return None
    idle_s = r.get("idle_cpu_pct", {}).get(g, 0.0) / 100 * r["wall_s"]
    return max(0.0, r["cpu_s"][g] - idle_s) * 1e6 / r["requests"]


def summarize_sse(runs: list[dict]) -> list[dict]:
    """Per configuration of the streamed case: CPU microseconds per request of each process group (net of
    its idle CPU) and Envoy's ext_proc messages per request (medians over rounds)."""
    sse = [r for r in runs if r.get("sse")]
    rows = []
    for name in dict.fromkeys(r["config"] for r in sse):
        rs = [r for r in sse if r["config"] == name]
        groups = sorted({g for r in rs for g in r["cpu_s"]})
        rows.append({
            "config": name, "sse": rs[0]["sse"], "conns": rs[0]["conns"], "reps": len(rs),
            "rps": _median([r["rps"] for r in rs]),
            "p50_ms": _median([r["p50_us"] / 1000 for r in rs]),
            "cpu_us_per_req": {g: _median([_net_us_per_req(r, g) for r in rs]) for g in groups},
            "cpu_us_per_req_gross": {g: _median([r["cpu_s"][g] * 1e6 / r["requests"] for r in rs if r["requests"]])
                                     for g in groups},
            "idle_cpu_pct": {g: _median([r.get("idle_cpu_pct", {}).get(g) for r in rs]) for g in groups},
            "cpu_pct": {g: _median([r["cpu_pct"][g] for r in rs]) for g in groups},
            "ext_proc_msgs_per_req": _msgs_per_req(rs, "sent"),
            "ext_proc_replies_per_req": _msgs_per_req(rs, "received"),
            "core0_other_pct_max": max((r["core0_other_pct"] + r["core0_steal_pct"] for r in rs), default=None),
            "failed": sum(r["failed"] for r in rs),
        })
    return rows


def _f(x, spec=".2f", unit=""):
    return "-" if x is None else f"{x:{spec}}{unit}"


def _cpu(pct: dict) -> str:
    proxy = [f"{g} {v:.0f}" for g, v in pct.items() if g != "backends" and v is not None]
    return f"{' + '.join(proxy) or '-'} / {_f(pct.get('backends'), '.0f')}"


def markdown(res: dict) -> str:
    a, m = res["args"], res["machine"]
    quiet = "quiet" if m["quiet"] else "NOT quiet: other work was running, the numbers are noisy"
    lines = [
        "## pinned: closed-loop wrk, proxy and backends on core 0, wrk on core 1",
        "",
        f"{m['cpu']}, {m['cores']} cores; load average at start {m['load_start'][0]:.2f} ({quiet}), "
        f"at end {m['load_end'][0]:.2f}. Envoy `--concurrency 1` ({res['versions'].get('envoy', '?')}); "
        f"{res['versions'].get('wrk', 'wrk')}. {a['reps']} round(s), medians; c=16: {a['seconds']:g} s, "
        f"c=1: {a['seconds_c1']:g} s per run.",
        "",
        "| configuration | prompt | req/s c=16 | p50/p99 c=16 | p50/p99 c=1 | added p50 vs envoy (c=1) "
        "| CPU% proxy/backends (c=16) | proxy CPU per request | other load on core 0 | failed |",
        "|---|---|---:|---:|---:|---:|---|---:|---:|---:|",
    ]
    for r in res["summary"]:
        lines.append(
            f"| {r['config']} | {r['size']} | {_f(r['rps_c16'], ',.0f')}{' (wrk-bound)' if r['client_bound'] else ''} | {_f(r['p50_ms_c16'], '.2f')} / "
            f"{_f(r['p99_ms_c16'], '.2f')} ms | {_f(r['p50_ms_c1'], '.3f')} / {_f(r['p99_ms_c1'], '.3f')} ms | "
            f"{_f(r['added_p50_ms_c1'], '+.3f', ' ms')} | {_cpu(r['cpu_pct_c16'])} | "
            f"{_f(r['proxy_cpu_us_per_req_c16'], ',.0f', ' us')} | {_f(r['core0_other_pct_max'], '.0f', '%')} | "
            f"{r['failed']} |")
    for name, why in res.get("unavailable", {}).items():
        lines.append(f"| {name} | | | | | | | | | unavailable: {why} |")
    lines += ["", "CPU% is of one core over the run, per process group (envoy, epp, router; backends: the C "
              "backend process); proxy CPU per request sums the proxy's groups. Other load on core 0: the core's "
              "time in other processes (other work on the machine) or stolen by the hypervisor, the worst run "
              "(the kernel's own irq/softirq time, mostly loopback traffic, is not counted there). wrk-bound: wrk "
              "used > 90% of its core, so the row's req/s is the client's limit, not the path's."]
    render = {r["config"]: r["render_per_req"] for r in res["summary"] if r.get("render_per_req")}
    if render:
        lines.append("Calls to the backends' /render or /tokenize per request (a tokenizing router; the instant "
                     "backend answers them at once, with a completion body): "
                     + ", ".join(f"{k} {v:.2f}" for k, v in render.items()) + ".")
    lines += ["", "### where the CPU goes: microseconds per request by process, c=16 / c=1", "",
              "| configuration | prompt | Envoy | epp | router | backends | ext_proc messages to epp / back |",
              "|---|---|---:|---:|---:|---:|---:|"]
    for r in res["summary"]:
        many, one = r.get("cpu_us_per_req_c16", {}), r.get("cpu_us_per_req_c1", {})
        msgs = (f"{r['ext_proc_msgs_per_req']:.1f} / {r['ext_proc_replies_per_req']:.1f}"
                if r.get("ext_proc_msgs_per_req") is not None else "-")
        cells = [f"{_f(many.get(g), ',.0f')} / {_f(one.get(g), ',.0f')}" if g in many or g in one else "-"
                 for g in ("envoy", "epp", "router", "backends")]
        lines.append(f"| {r['config']} | {r['size']} | {' | '.join(cells)} | {msgs} |")
    lines += ["", "At c=1 nothing is batched (each request wakes every process on its own), so a request costs "
                  "more CPU than at c=16; with one core for the whole path, c=1 latency is mostly this CPU time."]
    if res.get("sse"):
        lines += ["", f"### streamed answers: 16 KB prompt, {a['sse']} SSE chunks back "
                      f"({a['sse_gap_us']} us apart), {a['sse_conns']} connections, {a['sse_seconds']:g} s",
                  "",
                  "| configuration | req/s | p50 | ext_proc messages per request (to epp / back) | epp CPU per request "
                  "| Envoy CPU per request | CPU% proxy/backends | epp idle CPU% | other load on core 0 | failed |",
                  "|---|---:|---:|---:|---:|---:|---|---:|---:|---:|"]
        for r in res["sse"]:
            us = r["cpu_us_per_req"]
            lines.append(
                f"| {r['config']} | {_f(r['rps'], ',.0f')} | {_f(r['p50_ms'], '.2f')} ms | "
                f"{_f(r['ext_proc_msgs_per_req'], '.1f')} / {_f(r['ext_proc_replies_per_req'], '.1f')} | "
                f"{_f(us.get('epp'), ',.0f', ' us')} | "
                f"{_f(us.get('envoy'), ',.0f', ' us')} | {_cpu(r['cpu_pct'])} | "
                f"{_f(r['idle_cpu_pct'].get('epp'), '.1f', '%')} | "
                f"{_f(r['core0_other_pct_max'], '.0f', '%')} | {r['failed']} |")
        lines += ["", "CPU per request is net of each process's CPU with no traffic (measured just before the run: "
                      "epp's metric scrapes); ext_proc messages per request: Envoy's stream_msgs_sent and stream_msgs_received "
                      "counters (one message per SSE chunk when each chunk reaches Envoy on its own)."]
    return "\n".join(lines)
