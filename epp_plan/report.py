"""The planner's outputs: a markdown table per candidate, the Pareto plot, the recommended config."""
from __future__ import annotations

import math
import os

from .candidates import pd_label


def _f(v, spec=".2f", scale=1.0) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return format(v * scale, spec)


def table(results: list[dict], front: list[str], rec: str | None) -> list[str]:
    lines = ["| candidate | P:D | GPUs | stage | out tok/s | tok/s/GPU | TTFT p50 | TTFT p90 | ITL p50 | ITL p90 "
             "| E2E p50 | E2E p90 | hit rate | P/D share | done | SLO | |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|"]
    for r in results:
        st = r["judged"] or {}
        pd = pd_label(r["roles"])
        mark = "**recommended**" if r["name"] == rec else ("Pareto" if r["name"] in front else "")
        slo = "met" if r.get("meets_slo") else "; ".join(r.get("why") or ["-"])
        lines.append(
            f"| {r['name']} | {pd} | {r['gpus']} | {st.get('level', 0):g} | {_f(st.get('output_tok_per_s'), '.0f')} | "
            f"{_f(r.get('tok_s_per_gpu'), '.0f')} | {_f(st.get('ttft_p50_s'), '.3f')} s | {_f(st.get('ttft_p90_s'), '.3f')} s | "
            f"{_f(st.get('itl_p50_ms'), '.1f')} ms | {_f(st.get('itl_p90_ms'), '.1f')} ms | {_f(st.get('e2e_p50_s'), '.2f')} s | "
            f"{_f(st.get('e2e_p90_s'), '.2f')} s | {_f(st.get('hit_rate'), '.1f', 100)}% | "
            f"{_f(st.get('disaggregated_share'), '.0f', 100)}% | {st.get('completed', 0)}/{st.get('sent', 0)} | {slo} | {mark} |")
    return lines


def stage_table(results: list[dict]) -> list[str]:
    """Every stage of every candidate (the benchmark's table, for comparing with a wall-clock run)."""
    lines = ["| candidate | level | req/s | out tok/s | TTFT p50 | TTFT p90 | ITL p50 | ITL p90 | E2E p50 | E2E p90 "
             "| hit rate | max/mean pod load | errors |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in results:
        for s in r["stages"]:
            lines.append(f"| {r['name']} | {s['level']:g} | {_f(s['req_per_s'])} | {_f(s['output_tok_per_s'], '.0f')} | "
                         f"{_f(s['ttft_p50_s'], '.3f')} s | {_f(s['ttft_p90_s'], '.3f')} s | {_f(s['itl_p50_ms'], '.1f')} ms | "
                         f"{_f(s['itl_p90_ms'], '.1f')} ms | {_f(s['e2e_p50_s'], '.2f')} s | {_f(s['e2e_p90_s'], '.2f')} s | "
                         f"{_f(s['hit_rate'], '.1f', 100)}% | {_f(s['imbalance'])} | {s['errors']} |")
    return lines


def markdown(doc: dict) -> str:
    rec = doc.get("recommended")
    lines = [f"# epp-plan: {doc['workload']['path']}", "",
             f"{len(doc['candidates'])} candidates simulated in {doc['wall_s']:.1f} s "
             f"({doc['engine_s']:.0f} engine s in all, {sum(r['sim']['cpu_s'] for r in doc['candidates']):.1f} s of CPU); judged on stage {doc['stage']}; SLOs: "
             + (", ".join(f"{k} <= {v:g} s" for k, v in doc["slos"].items()) or "none"), "",
             f"stack: {', '.join(f'{k} {v:g}' for k, v in doc['stack'].items())}", ""]
    if rec:
        r = next(x for x in doc["candidates"] if x["name"] == rec)
        lines += [f"**Recommended: {rec}** — {r['tok_s_per_gpu']:.0f} output tokens/s per GPU on {r['gpus']} GPUs "
                  f"(roles {r['roles']}); config in recommended.yaml, roles in recommended-pool.json.", ""]
    else:
        lines += ["**No candidate meets the SLOs** with every request answered.", ""]
    lines += table(doc["candidates"], doc["pareto"], rec)
    lines += ["", "## Every stage", ""] + stage_table(doc["candidates"])
    if doc.get("plots"):
        lines += ["", "plots: " + ", ".join(doc["plots"])]
    elif doc.get("plots_note"):
        lines += ["", f"plots: {doc['plots_note']}"]
    return "\n".join(lines)


def short_label(r: dict) -> str:
    """P:D, then what the sweep set (n = nonCachedTokens), for crowded plots."""
    parts = [pd_label(r["roles"])]
    st = r.get("settings") or {}
    if "nonCachedTokens" in st:
        parts.append(f"n{st['nonCachedTokens']}")
    for k, w in (st.get("weights") or {}).items():
        parts.append(f"{k.split('-')[0]}x{w:g}")
    if st.get("router") and st.get("variant"):
        parts.insert(0, st["variant"])
    return " ".join(parts)


def frontier_2d(points: list[tuple[float, float, dict]]) -> list[tuple[float, float, dict]]:
    """The points no other beats on both plotted axes (lower x, higher y), by rising x."""
    out, best = [], -math.inf
    for x, y, r in sorted(points, key=lambda p: (p[0], -p[1])):
        if y > best:
            out.append((x, y, r))
            best = y
    return out


def plot(doc: dict, outdir: str) -> list[str]:
    """pareto.png: tokens/s per GPU against the first SLO'd latency (TTFT p90 without SLOs), log scale;
    green where every SLO is met; the frontier of the two plotted axes joined; the recommendation
    circled. Needs matplotlib (pip install -e '.[plan]')."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from .plan import SLO_KEYS
    key = next(iter(doc["slos"]), "ttft_p90")
    metric = SLO_KEYS[key]
    scale = 1e-3 if metric.endswith("_ms") else 1.0
    pts = [(r["judged"][metric] * scale, r["tok_s_per_gpu"], r) for r in doc["candidates"]
           if r["judged"] and r["judged"][metric] == r["judged"][metric]]
    fig, ax = plt.subplots(figsize=(9, 6))
    for x, y, r in pts:
        ax.scatter([x], [y], color="tab:green" if r.get("meets_slo") else "tab:gray", zorder=3, s=28)
        ax.annotate(short_label(r), (x, y), fontsize=7, xytext=(4, 3), textcoords="offset points")
    front = frontier_2d(pts)
    if len(front) > 1:
        ax.step([p[0] for p in front], [p[1] for p in front], where="post", linestyle="--", color="tab:blue",
                label=f"frontier (tok/s/GPU vs {key})", zorder=2)
    rec = next(((x, y) for x, y, r in pts if r["name"] == doc.get("recommended")), None)
    if rec:
        ax.scatter([rec[0]], [rec[1]], s=260, facecolors="none", edgecolors="tab:red", linewidths=2,
                   label="recommended", zorder=4)
    if key in doc["slos"]:
        ax.axvline(doc["slos"][key], color="tab:red", linestyle=":", label=f"SLO {key} {doc['slos'][key]:g} s")
    if pts and max(p[0] for p in pts) > 20 * max(1e-9, min(p[0] for p in pts)):
        ax.set_xscale("log")
    ax.set_xlabel(f"{key} (s)")
    ax.set_ylabel("output tokens/s per GPU")
    others = ", ".join(k for k in doc["slos"] if k != key)
    ax.set_title("epp-plan candidates: green = every SLO met" + (f" (also {others})" if others else "")
                 + "; labels P:D, n = nonCachedTokens", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(loc="best", fontsize=8)
    path = os.path.join(outdir, "pareto.png")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [os.path.basename(path)]
