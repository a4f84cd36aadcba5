"""What a path adds to a request, against a baseline path on the same backends: alternated fixed-rate
runs (added p50/p99, CPU per request), and the highest sustained rate of an open-loop ramp."""
from __future__ import annotations

import asyncio
import math
import statistics

from testbed.http1 import Target

from .openloop import Payload, Procs, run_load, warm


def med(vals):
    vals = [v for v in vals if v is not None and not (isinstance(v, float) and math.isnan(v))]
    return statistics.median(vals) if vals else math.nan


def fmt(v, spec=".2f"):
    return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else format(v, spec)


async def fixed_rate(a, targets: dict[str, Target], sizes: list[int], procs: Procs, idle_epp_cpu_rate: float) -> dict:
    out = {}
    for size in sizes:
        payload = Payload(size * 1024)
        for t in targets.values():
            w = await warm(t, payload, procs)
            if w["errors"]:
                raise RuntimeError(f"warm-up through {t.name} failed: {w['codes']}")
        reps = []
        for rep in range(a.reps):
            order = ["direct", "epp"] if rep % 2 == 0 else ["epp", "direct"]
            pair = {}
            for name in order:
                pair[name] = await run_load(targets[name], payload, a.rate, a.count, 1000 + rep, a.arrival, procs)
            reps.append(pair)
        d = [r["direct"] for r in reps]
        e = [r["epp"] for r in reps]
        add50 = [x["p50_ms"] - y["p50_ms"] for x, y in zip(e, d)]
        add99 = [x["p99_ms"] - y["p99_ms"] for x, y in zip(e, d)]
        epp_cpu_us = [max(0.0, x["cpu_s"]["epp"] - idle_epp_cpu_rate * x["wall_s"]) / max(1, x["ok"]) * 1e6 for x in e]
        out[size] = {
            "direct_p50_ms": med([x["p50_ms"] for x in d]), "direct_p99_ms": med([x["p99_ms"] for x in d]),
            "epp_p50_ms": med([x["p50_ms"] for x in e]), "epp_p99_ms": med([x["p99_ms"] for x in e]),
            "added_p50_ms": med(add50), "added_p99_ms": med(add99),
            "added_p50_ms_all": add50, "added_p99_ms_all": add99,
            "errors": sum(x["errors"] for x in d + e),
            "epp_cpu_us_per_req": med(epp_cpu_us),
            "envoy_cpu_us_per_req_direct": med([x["cpu_s"]["envoy"] / max(1, x["ok"]) * 1e6 for x in d]),
            "envoy_cpu_us_per_req_epp": med([x["cpu_s"]["envoy"] / max(1, x["ok"]) * 1e6 for x in e]),
            "loadgen_cpu_frac": max(x["cpu_s"]["loadgen"] / x["wall_s"] for x in d + e),
            "lag_p99_ms": max(x["lag_p99_ms"] for x in d + e),
            "foreign_cpu_frac": med([x["foreign_cpu_frac"] for x in d + e]),
            "runs": reps,
        }
        r = out[size]
        print(f"  {size:>3} KB  direct p50 {r['direct_p50_ms']:.2f} p99 {r['direct_p99_ms']:.2f} | epp p50 "
              f"{r['epp_p50_ms']:.2f} p99 {r['epp_p99_ms']:.2f} | added p50 {r['added_p50_ms']:+.2f} p99 "
              f"{r['added_p99_ms']:+.2f} ms | epp {r['epp_cpu_us_per_req']:.0f} us CPU/req | errors {r['errors']} | "
              f"other load on the machine {r['foreign_cpu_frac'] * 100:.0f}% of a core",
              flush=True)
    return out


async def ramp(a, target: Target, size: int, base_p99_ms: float, procs: Procs, factor: float | None = None) -> dict:
    payload = Payload(size * 1024)
    limit = max(5 * base_p99_ms, base_p99_ms + 20.0)
    results = []
    for rep in range(a.ramp_reps):
        rate = a.rate
        last_good, steps, why, bound_by = None, [], "max rate reached", None
        while rate <= a.max_rate:
            count = max(50, int(rate * a.step_seconds))
            for attempt in range(2):  # a failing step gets one more try: one noisy second must not end the ramp
                r = await run_load(target, payload, rate, count, 5000 + rep + 100 * attempt, a.arrival, procs, timeout=10)
                steps.append({k: r[k] for k in ("rate", "count", "errors", "codes", "p50_ms", "p99_ms", "achieved_rps",
                                                "offered_rps", "lag_p99_ms", "cpu_s", "wall_s", "foreign_cpu_frac")})
                bad = []
                if r["errors"]:
                    bad.append(f"errors {r['codes']}")
                if not r["p99_ms"] <= limit:
                    bad.append(f"p99 {r['p99_ms']:.1f} ms > {limit:.1f}")
                if r["achieved_rps"] < 0.95 * r["offered_rps"]:
                    bad.append(f"throughput {r['achieved_rps']:.0f} < 95% of offered {r['offered_rps']:.0f}")
                if not bad:
                    break
                await asyncio.sleep(0.3)  # let the backlog drain before the retry
            lg = r["cpu_s"]["loadgen"] / r["wall_s"]
            if bad:
                why = f"at {rate:.0f} req/s (twice): " + "; ".join(bad)
                break
            last_good = rate
            cpu = {k: v / r["wall_s"] for k, v in r["cpu_s"].items() if k != "machine"}
            cpu["foreign"] = r["foreign_cpu_frac"]
            bound_by = cpu
            if lg > 0.9 or r["lag_p99_ms"] > 20:
                why = f"stopped at {rate:.0f} req/s: load generator saturated (CPU {lg:.0%}, lag p99 {r['lag_p99_ms']:.1f} ms)"
                break
            rate = round(rate * (factor or a.ramp_factor))
        results.append({"last_good": last_good, "why": why, "cpu_at_last_good": bound_by, "steps": steps})
    goods = [r["last_good"] or 0 for r in results]
    return {"last_good_rps": med(goods), "all": goods, "p99_limit_ms": limit,
            "loadgen_bound": any("load generator" in r["why"] for r in results), "reps": results}
