"""Stage statistics (engine time), the markdown tables and the goal check of a run."""
from __future__ import annotations

import math

from .loadgen import Stage
from .openloop import pct


def _p(sorted_vals: list[float], q: float) -> float:
    return pct(sorted_vals, q)


def summarize(st: Stage, before: list[dict], after: list[dict], cpu: dict, time_scale: float, level: float,
              mode: str) -> dict:
    """One stage in engine time: wall durations and latencies x time_scale, rates / time_scale."""
    ts = time_scale
    ok = [r for r in st.recs if r.ok]
    wall = max(1e-9, st.t_end - st.t_start)
    eng = wall * ts
    ttft = sorted(r.ttft * ts for r in ok)
    itl = sorted(x * ts for r in ok for x in r.itl)
    e2e = sorted(r.e2e * ts for r in ok)
    prompt = sum(r.prompt_tokens for r in ok)
    cached = sum(r.cached_tokens for r in ok)
    errors: dict[str, int] = {}
    for r in st.recs:
        if not r.ok:
            k = (r.error or f"http {r.status}").split(":")[0]
            errors[k] = errors.get(k, 0) + 1
    # a counter that went down belongs to a pod that restarted during the stage: count from its restart
    pods = [{k: (a[k] - b[k] if a[k] >= b[k] else a[k]) for k in ("hits", "queries", "requests", "preemptions",
                                                                   "prompt_tokens", "ttft_sum", "ttft_count",
                                                                   "queue_sum", "queue_count", "generation_tokens")}
            for a, b in zip(after, before)]
    q = sum(p["queries"] for p in pods)
    reqs = [p["requests"] for p in pods]
    mean_reqs = sum(reqs) / len(reqs) if reqs else math.nan
    lag = sorted(r.lag for r in st.recs)
    return {
        "mode": mode, "level": level, "sent": len(st.recs), "completed": len(ok), "errors": len(st.recs) - len(ok),
        "error_kinds": errors, "drained": st.drained,
        "wall_s": wall, "engine_s": eng,
        "req_per_s": len(ok) / eng, "output_tok_per_s": sum(r.out_tokens for r in ok) / eng,
        # every token the pods generated in the stage, finished requests or not (an overload stage cut at
        # its drain timeout leaves work half done; the pods were busy with it all the same)
        "pool_output_tok_per_s": sum(p["generation_tokens"] for p in pods) / eng,
        "input_tok_per_s": prompt / eng,
        "ttft_p50_s": _p(ttft, 50), "ttft_p90_s": _p(ttft, 90), "ttft_p99_s": _p(ttft, 99),
        "ttft_mean_s": sum(ttft) / len(ttft) if ttft else math.nan,
        "itl_p50_ms": _p(itl, 50) * 1e3, "itl_p90_ms": _p(itl, 90) * 1e3,
        "e2e_p50_s": _p(e2e, 50), "e2e_p90_s": _p(e2e, 90),
        "hit_rate": sum(p["hits"] for p in pods) / q if q else math.nan,
        "client_cached_share": cached / prompt if prompt else math.nan,
        "pod_requests": reqs, "pod_hit_rate": [p["hits"] / p["queries"] if p["queries"] else math.nan for p in pods],
        "imbalance": max(reqs) / mean_reqs if reqs and mean_reqs else math.nan,
        "preemptions": sum(p["preemptions"] for p in pods),
        "server_ttft_mean_s": (sum(p["ttft_sum"] for p in pods) / sum(p["ttft_count"] for p in pods)
                               if sum(p["ttft_count"] for p in pods) else math.nan),
        "server_queue_mean_s": (sum(p["queue_sum"] for p in pods) / sum(p["queue_count"] for p in pods)
                                if sum(p["queue_count"] for p in pods) else math.nan),
        "arrival_lag_p99_ms": _p(lag, 99) * 1e3,
        "cpu": cpu,
    }


FAIRNESS_HEADERS = ("x-llm-d-inference-fairness-id", "x-gateway-inference-fairness-id")


def _hist_delta(after: dict | None, before: dict | None, fid: str) -> dict | None:
    if after is None or fid not in after:
        return None
    a, b = after[fid], (before or {}).get(fid) or {"le": {}, "sum": 0.0, "count": 0.0}
    return {"le": {le: c - b["le"].get(le, 0.0) for le, c in a["le"].items()},
            "sum": a["sum"] - b["sum"], "count": a["count"] - b["count"]}


def _hist_quantile(h: dict, q: float) -> float:
    """The q-quantile of a cumulative histogram, linear within the bucket (Prometheus' histogram_quantile)."""
    n = h["count"]
    if n <= 0:
        return math.nan
    rank, prev_le, prev_c = q * n, 0.0, 0.0
    for le in sorted(h["le"]):
        c = h["le"][le]
        if c >= rank:
            if math.isinf(le):
                return prev_le
            return prev_le + (le - prev_le) * ((rank - prev_c) / (c - prev_c) if c > prev_c else 1.0)
        prev_le, prev_c = le, c
    return prev_le


def tenants(st: Stage, specs: list[dict], time_scale: float, q_before: dict | None, q_after: dict | None) -> dict:
    """Per tenant (engine time): sent, served, refused by reason, TTFT, and the time its requests waited in
    epp's flow-control queue (from epp's histogram by fairness id; none for other routers)."""
    out = {}
    for t in specs:
        name = t["name"]
        recs = [r for r in st.recs if r.tenant == name]
        ok = [r for r in recs if r.ok]
        ttft = sorted(r.ttft * time_scale for r in ok)
        # a request cut at the drain timeout before its first token waited at least until the cut: counting
        # that lower bound keeps a router whose backlog never cleared from looking better than it was
        cut = [(st.t_end - r.t_send) * time_scale for r in recs
               if not r.ok and r.status in (0, 200) and r.ttft != r.ttft]
        censored = sorted(ttft + cut)
        refused: dict[str, int] = {}
        for r in recs:
            if not r.ok:
                k = (f"{r.status} {r.reason}".strip() if r.status not in (0, 200)
                     else (r.error or "error").split(":")[0])
                refused[k] = refused.get(k, 0) + 1
        headers = {k.lower(): v for k, v in (t.get("headers") or {}).items()}
        fid = next((headers[h] for h in FAIRNESS_HEADERS if h in headers), "default-flow")
        h = _hist_delta(q_after, q_before, fid)
        out[name] = {
            "sent": len(recs), "ok": len(ok), "refused": refused,
            "ttft_p50_s": _p(ttft, 50), "ttft_p90_s": _p(ttft, 90), "ttft_p90_with_cut_s": _p(censored, 90),
            "output_tok_per_s": sum(r.out_tokens for r in ok) / max(1e-9, (st.t_end - st.t_start) * time_scale),
            "queue_n": h["count"] if h else None,
            "queue_mean_s": h["sum"] / h["count"] * time_scale if h and h["count"] else math.nan,
            "queue_p90_s": _hist_quantile(h, 0.9) * time_scale if h else math.nan,
            # share that waited at most 1 engine second: exact at a bucket bound when one falls there
            "queue_le_1s": (h["le"].get(1.0 / time_scale, math.nan) / h["count"]) if h and h["count"] else math.nan,
        }
    return out


def tenant_table(res: dict) -> list[str]:
    lines = ["| router | stage | tenant | sent | served | refused | TTFT p50 | TTFT p90 | TTFT p90 incl. cut | "
             "EPP queue mean | EPP queue p90 |", "|" + "---|" * 11]
    for name, r in res["routers"].items():
        if r["status"] != "ok":
            continue
        for i, s in enumerate(r["stages"]):
            for tn, t in (s.get("tenants") or {}).items():
                if not t["sent"]:
                    continue
                refused = ", ".join(f"{k}: {v}" for k, v in t["refused"].items()) or "0"
                lines.append(f"| {name} | {i + 1} | {tn} | {t['sent']} | {t['ok']} | {refused} | {_lat(t['ttft_p50_s'])} | "
                             f"{_lat(t['ttft_p90_s'])} | {_lat(t.get('ttft_p90_with_cut_s'))} | {_lat(t['queue_mean_s'])} | "
                             f"{_lat(t['queue_p90_s'])} |")
    return lines


def noisy_goal(res: dict) -> list[str]:
    """Issue 16's goals: the light tenant's TTFT under a flood against its unloaded TTFT and against the
    baseline router; the pool's output against the baseline's; high priority's queue time."""
    g = res["scenario"]["goal"]
    r, b = res["routers"].get(g["router"]), res["routers"].get(g["baseline"])
    if not r or not b or r["status"] != "ok" or b["status"] != "ok" or len(r["stages"]) < 2 or len(b["stages"]) < 2:
        return [f"goal: {g['router']} vs {g['baseline']}: not measured"]
    light, high = g["light"], g["high"]
    unloaded, loaded = r["stages"][0]["tenants"][light], r["stages"][1]["tenants"][light]
    base = b["stages"][1]["tenants"][light]
    x_unloaded = loaded["ttft_p90_s"] / unloaded["ttft_p90_s"] if unloaded["ttft_p90_s"] else math.nan
    # the baseline's p90 with its requests cut before a first token counted at their wait so far (a lower
    # bound of what they would have seen); requests this router refused do not count for either
    base_p90 = base.get("ttft_p90_with_cut_s", base["ttft_p90_s"])
    x_base = base_p90 / loaded["ttft_p90_s"] if loaded["ttft_p90_s"] else math.nan
    tok = r["stages"][1]["pool_output_tok_per_s"] / b["stages"][1]["pool_output_tok_per_s"]
    hq = r["stages"][1]["tenants"][high]["queue_p90_s"]

    def verdict(ok: bool) -> str:
        return "met" if ok else "NOT met"
    cpu = any(x["stages"][1]["cpu"]["cpu_bound"] for x in (r, b))
    return [f"goals ({g['router']} against {g['baseline']}, flood stage){' (a stage was CPU-bound: indicative only)' if cpu else ''}:",
            f"- {light} TTFT p90 {_lat(loaded['ttft_p90_s'])} = {f(x_unloaded)}x its unloaded {_lat(unloaded['ttft_p90_s'])} "
            f"(want <= {g['max_ttft_vs_unloaded']}: {verdict(x_unloaded <= g['max_ttft_vs_unloaded'])})",
            f"- {light} TTFT p90 {f(x_base, '.1f')}x better than {g['baseline']}'s {_lat(base_p90)} (its {base['ok']} "
            f"of {base['sent']} served; cut ones counted at their wait) "
            f"(want >= {g['min_ttft_vs_baseline']}: {verdict(x_base >= g['min_ttft_vs_baseline'])})",
            f"- pool output tok/s {f(tok)}x {g['baseline']}'s (want >= {g['min_throughput_vs_baseline']}: "
            f"{verdict(tok >= g['min_throughput_vs_baseline'])})",
            f"- {high} (high priority) EPP queue time p90 {_lat(hq)} (want < {g['max_high_queue_p90_s']} s: "
            f"{verdict(hq < g['max_high_queue_p90_s'])}); the others wait: "
            + ", ".join(f"{tn} mean {_lat(t['queue_mean_s'])}" for tn, t in r["stages"][1]["tenants"].items() if tn != high)]


def f(v, spec: str = ".2f", unit: str = "") -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v, spec) + unit


def _lat(v: float) -> str:
    """Seconds, in ms below 1 s."""
    if v is None or math.isnan(v):
        return "-"
    return f"{v * 1e3:.0f} ms" if v < 1 else f"{v:.2f} s"


LEVEL_LABEL = {"poisson": "rate (req/s)", "concurrency": "concurrency", "sessions": "sessions/s"}
HEADER = ("| router | {lvl} | req/s | out tok/s | TTFT p50 | TTFT p90 | ITL p50 | ITL p90 | E2E p50 | E2E p90 "
          "| hit rate | max/mean pod load | errors | CPU |")


def table(res: dict) -> list[str]:
    mode = res["scenario"]["load"]["mode"]
    lines = [HEADER.format(lvl=LEVEL_LABEL.get(mode, "concurrency")),
             "|" + "---|" * 14]
    for name, r in res["routers"].items():
        if r["status"] != "ok":
            lines.append(f"| {name} | {r['status']}: {r.get('reason', '')} |" + " |" * 12)
            continue
        for s in r["stages"]:
            c = s["cpu"]
            cpu = f"{c['machine_busy']:.0%}" + (f" **CPU-BOUND** ({c['why']})" if c["cpu_bound"] else "")
            err = str(s["errors"]) + (f" ({', '.join(f'{k} {v}' for k, v in s['error_kinds'].items())})" if s["errors"] else "")
            lines.append(
                f"| {name} | {f(s['level'], 'g')} | {f(s['req_per_s'])} | {f(s['output_tok_per_s'], '.0f')} | "
                f"{_lat(s['ttft_p50_s'])} | {_lat(s['ttft_p90_s'])} | {f(s['itl_p50_ms'], '.1f', ' ms')} | "
                f"{f(s['itl_p90_ms'], '.1f', ' ms')} | {_lat(s['e2e_p50_s'])} | {_lat(s['e2e_p90_s'])} | "
                f"{f(s['hit_rate'] * 100, '.1f', '%')} | {f(s['imbalance'], '.2f')} | {err} | {cpu} |")
    return lines


def goal(res: dict) -> list[str]:
    """The scenario's goal (e.g. issue 5: precise >= 1.25x approximate tok/s, >= 10x lower p90 TTFT) at the
    highest stage."""
    g = res["scenario"].get("goal") or {}
    if not g:
        return []
    if g.get("type") == "noisy-neighbor":
        return noisy_goal(res)
    r, b = res["routers"].get(g["router"]), res["routers"].get(g["baseline"])
    if not r or not b or r["status"] != "ok" or b["status"] != "ok" or not r["stages"] or not b["stages"]:
        return [f"goal: {g['router']} vs {g['baseline']}: not measured"]
    top_r, top_b = r["stages"][-1], b["stages"][-1]
    tx = top_r["output_tok_per_s"] / top_b["output_tok_per_s"] if top_b["output_tok_per_s"] else math.nan
    lx = top_b["ttft_p90_s"] / top_r["ttft_p90_s"] if top_r["ttft_p90_s"] else math.nan
    ok_t, ok_l = tx >= g.get("min_throughput_x", 0), lx >= g.get("min_ttft_p90_x", 0)
    flag = " (CPU-bound stage: indicative only)" if top_r["cpu"]["cpu_bound"] or top_b["cpu"]["cpu_bound"] else ""
    return [f"goal at {f(top_r['level'], 'g')}: {g['router']} / {g['baseline']} output tok/s = {f(tx)}x "
            f"(want >= {g.get('min_throughput_x')}: {'met' if ok_t else 'NOT met'}); p90 TTFT {f(lx, '.1f')}x lower "
            f"(want >= {g.get('min_ttft_p90_x')}: {'met' if ok_l else 'NOT met'}){flag}"]


def markdown(res: dict) -> str:
    s = res["scenario"]
    p, w, ld = s["pool"], s["workload"], s["load"]
    lines = [f"# {s['name']}", "", s.get("description", "").strip(), "",
             f"pool: {p['count']} x vllm_sim `{', '.join(p.get('profiles') or []) or p['profile']}`"
             f"{' (cycled over the pods)' if p.get('profiles') else ''}, time scale {p['time_scale']:g} (engine s per wall s), "
             f"GPU blocks {p['gpu_blocks'] or 'profile default'} x {p['block_size']} tokens, CPU offload blocks "
             f"{p['offload_blocks']}, max_num_seqs {p['max_num_seqs']}; pool restarted per router (cold caches)",
             f"workload: {describe_workload(w)}; load: {ld['mode']} {'concurrency' if ld['mode'] == 'concurrency' else 'rates'} "
             f"{', '.join(f(float(x), 'g') for x in (ld['concurrency'] if ld['mode'] == 'concurrency' else ld['rates']))}"
             f"{' (bursts: on %gs / off %gs)' % (ld.get('on_s', 0), ld.get('off_s', 0)) if ld.get('off_s') else ''}, "
             f"{ld['duration_s']:g} engine s per stage (stages in order, caches kept)",
             f"load generator: {res.get('client', 'bench')}" + (" (kubernetes-sigs/inference-perf: its own prompts; "
                                                                  "hit rate per run only, in the routers' info)"
                                                                  if res.get("client") == "inference-perf" else ""),
             *([f"routers: {s['router_replicas']} replicas each behind Envoy (each sees 1/{s['router_replicas']} of the "
                f"requests)"] if s.get("router_replicas", 1) > 1 else []),
             *(["events: " + "; ".join(f"stage {e['stage']} at {e['at_s']:g} s: {e['action']} pod {e['pod']}"
                                        for e in s["events"])] if s.get("events") else []),
             *([f"side client: {s['side_client']['rate']:g} req/s straight to pods {s['side_client']['pods']} in "
                f"stages {s['side_client'].get('stages')}"] if s.get("side_client") else []),
             "", "All times and rates are engine time (wall x time scale). hit rate: the sims' prefix-cache hits / "
             "queries (tokens, GPU + CPU tier) during the stage. max/mean pod load: requests on the busiest pod over "
             "the mean. CPU: machine busy share during the stage.", ""]
    lines += table(res)
    if any(st.get("tenants") for r in res["routers"].values() for st in r.get("stages", [])):
        lines += ["", "Per tenant (refused: status and x-llm-d-request-dropped-reason; EPP queue: time in epp's "
                      "flow-control queue, from its histogram; routers without flow control have none):", ""]
        lines += tenant_table(res)
    lines += [""] + goal(res)
    from .goals import lines as goal_lines
    lines += goal_lines(res)
    for name, r in res["routers"].items():
        if r["status"] == "ok" and r.get("info"):
            lines.append(f"- {name}: " + ", ".join(f"{k} {v}" for k, v in r["info"].items() if k != "cmd"))
    if res.get("plots"):
        lines.append("\nplots: " + ", ".join(res["plots"]))
    elif res.get("plots_note"):
        lines.append(f"\nplots: {res['plots_note']}")
    return "\n".join(x for x in lines if x is not None)


def describe_workload(w: dict) -> str:
    t = w["type"]
    if t == "shared_prefix":
        return (f"shared_prefix {w['groups']} groups x {w['prompts_per_group']} prompts, system {w['system_len']} + "
                f"question {w['question_len']} tokens, output {out_len(w)} ({w['api']})")
    if t == "agentic":
        return (f"agentic sessions of {w['turns']} turns (x-session-id), {w['groups']} agents' system prompts of "
                f"{w['system_len']} tokens, task {w['question_len']}, tool results {w['tool_min']}-{w['tool_max']}, "
                f"output {out_len(w)} (chat)")
    if t == "multi_turn":
        return (f"multi_turn {w['sessions']} sessions x {w['turns']} turns, system {w['system_len']} (one per "
                f"{w['groups']} groups), question {w['question_len']}, output {w['output_len']} (chat)")
    tenants = "; tenants " + ", ".join(f"{x['name']} x{x.get('rate_x', 1)}" for x in w["tenants"]) if w.get("tenants") else ""
    return f"{t} input {w['input_min']}-{w['input_max']} tokens, output {out_len(w)} ({w['api']}){tenants}"


def out_len(w: dict) -> str:
    return f"{w.get('output_min') or 1}-{w['output_max']}" if w.get("output_max") else str(w["output_len"])
