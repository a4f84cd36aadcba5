"""A scenario's routing goals, checked on a run's rows (one run, or the medians of repeats).

    goals:
      - {kind: best-epp}                        # at every stage the best epp config has the lowest TTFT p90
                                                #   of all routers at >= their output tokens/s (98%: equal
                                                #   within run-to-run noise)
      - {kind: vs-peers, min_ttft_p90_x: 1.5}   # at the top stage, the best epp config's TTFT p90 is that
                                                #   many times lower than the best non-epp router's
      - {kind: pair, router: epp-precise, baseline: epp-approx, min_throughput_x: 1.25, min_ttft_p90_x: 3}
                                                # at the top stage: either ratio met (any) is enough

"epp config" = a router whose name starts with "epp"; every other router (Envoy round robin, the peers)
is a "peer" here. The best epp config at a stage is the one with the lowest TTFT p90 among those that
completed as many requests as the router with the most tokens/s, or 98% of its tokens/s (a config that
is fast because it dropped work does not count).
"""
from __future__ import annotations

import math

EQUAL = 0.98          # throughput within 2% counts as equal (run-to-run noise of the medians)


def at_least(a: dict, b: dict) -> bool:
    """Row a's throughput is equal to or higher than row b's: it completed as many requests (below
    saturation every router completes the offered load, and tokens/s then differ only by when the
    stage's last answers end), or its output tokens/s are within EQUAL of b's."""
    return a.get("completed", 0) >= b.get("completed", 0) or a["output_tok_per_s"] >= EQUAL * b["output_tok_per_s"]


def _ok(res: dict) -> dict:
    return {n: r for n, r in res["routers"].items() if r.get("status") == "ok" and r.get("stages")}


def _stage(r: dict, stage: tuple[int, float]) -> dict | None:
    """Stage (position, rate) of a router's run: a scenario may hold one rate in two stages (churn's
    second and third), so the position tells them apart; the rate guards against a run that stopped early."""
    i, rate = stage
    return r["stages"][i] if i < len(r["stages"]) and r["stages"][i]["level"] == rate else None


def _stages(routers: dict) -> list[tuple[int, float]]:
    """The stages (position, rate) every router ran."""
    stages = None
    for r in routers.values():
        these = list(enumerate(s["level"] for s in r["stages"]))
        stages = these if stages is None else [x for x in stages if x in these]
    return stages or []


def best_epp(routers: dict, stage: tuple[int, float]) -> tuple[str, dict] | None:
    rows = {n: _stage(r, stage) for n, r in routers.items()}
    rows = {n: s for n, s in rows.items() if s is not None}
    if not rows:
        return None
    top = max(rows.values(), key=lambda s: s["output_tok_per_s"])
    epps = [(s["ttft_p90_s"], n) for n, s in rows.items() if n.startswith("epp")
            and at_least(s, top) and not math.isnan(s["ttft_p90_s"])]
    if not epps:
        epps = [(s["ttft_p90_s"], n) for n, s in rows.items() if n.startswith("epp")]
    if not epps:
        return None
    _, name = min(epps)
    return name, rows[name]


def _name(stage: tuple[int, float]) -> str:
    return f"stage {stage[0] + 1} ({stage[1]:g})"


def check(res: dict) -> list[tuple[str, bool | None, str]]:
    """(goal, met or None when not measurable, detail) for each of the scenario's goals."""
    routers = _ok(res)
    out = []
    for g in res["scenario"].get("goals") or []:
        kind = g.get("kind")
        stages = _stages(routers)
        if not stages:
            out.append((kind, None, "no stage every router completed"))
            continue
        if kind == "best-epp":
            fails, parts = [], []
            for stage in stages:
                be = best_epp(routers, stage)
                if be is None:
                    fails.append(f"{_name(stage)}: no epp row")
                    continue
                name, row = be
                beaten = []
                for n, r in routers.items():
                    s = _stage(r, stage)
                    if n == name or s is None or n.startswith("epp"):
                        continue
                    if not (row["ttft_p90_s"] <= s["ttft_p90_s"] and at_least(row, s)):
                        beaten.append(f"{n} (TTFT p90 {s['ttft_p90_s'] * 1e3:.0f} ms, {s['output_tok_per_s']:.0f} tok/s)")
                parts.append(f"{_name(stage)}: {name} {row['ttft_p90_s'] * 1e3:.0f} ms / {row['output_tok_per_s']:.0f} tok/s")
                if beaten:
                    fails.append(f"{_name(stage)}: {name} not ahead of " + ", ".join(beaten))
            out.append(("best epp config: lowest TTFT p90 at >= throughput, every stage", not fails,
                        "; ".join(fails) if fails else "; ".join(parts)))
        elif kind == "vs-peers":
            stage = stages[-1]
            be = best_epp(routers, stage)
            peers = [(s["ttft_p90_s"], n) for n, r in routers.items() if not n.startswith("epp")
                     and (s := _stage(r, stage)) is not None]
            if be is None or not peers:
                out.append((kind, None, "no epp or no peer row"))
                continue
            p90, peer = min(peers)
            x = p90 / be[1]["ttft_p90_s"] if be[1]["ttft_p90_s"] else math.nan
            want = g.get("min_ttft_p90_x", 1.5)
            out.append((f"TTFT p90 >= {want}x lower than the best peer at {_name(stage)}", x >= want,
                        f"{be[0]} {be[1]['ttft_p90_s'] * 1e3:.0f} ms vs {peer} {p90 * 1e3:.0f} ms: {x:.2f}x"))
        elif kind == "pair":
            a, b = routers.get(g["router"]), routers.get(g["baseline"])
            stage = stages[-1]
            sa, sb = (_stage(a, stage) if a else None), (_stage(b, stage) if b else None)
            if sa is None or sb is None:
                out.append((f"{g['router']} vs {g['baseline']}", None, "not measured"))
                continue
            tx = sa["output_tok_per_s"] / sb["output_tok_per_s"] if sb["output_tok_per_s"] else math.nan
            lx = sb["ttft_p90_s"] / sa["ttft_p90_s"] if sa["ttft_p90_s"] else math.nan
            wt, wl = g.get("min_throughput_x", math.inf), g.get("min_ttft_p90_x", math.inf)
            out.append((f"{g['router']} vs {g['baseline']} at {_name(stage)}: >= {wt}x tok/s or >= {wl}x lower TTFT p90",
                        tx >= wt or lx >= wl, f"{tx:.2f}x tok/s, {lx:.2f}x lower TTFT p90"))
        else:
            out.append((str(kind), None, "unknown goal kind"))
    return out


def lines(res: dict) -> list[str]:
    got = check(res)
    if not got:
        return []
    out = ["", "goals" + (f" (medians of {res['repeats']} runs)" if res.get("repeats") else "") + ":"]
    for goal, met, detail in got:
        mark = "not measured" if met is None else ("met" if met else "NOT met")
        out.append(f"- {goal}: **{mark}** — {detail}")
    return out
