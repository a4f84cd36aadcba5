"""CPU headroom of the machine while a stage runs, and whether the stage was CPU-bound.

A stage is flagged CPU-bound when the machine had no headroom (all CPUs > 90% busy on average, from
/proc/stat, whoever used them), when the load generator used > 85% of a core, or when its event loop ran
late (p99 timer lag > 25 ms of wall time): then the sims' engine clocks, the router and the load
generator were competing for CPU and latencies include that wait, not only the modelled engine time.
Per-component CPU (sims, router parts, load generator, other load on the machine) is reported in cores.
"""
from __future__ import annotations

import asyncio
import os
import time

from testbed.procstat import cpu_seconds, machine_busy_seconds

NCPU = os.cpu_count() or 1
BUSY_LIMIT, LOADGEN_LIMIT, LAG_LIMIT_MS = 0.90, 0.85, 25.0


def _pct(vals: list[float], q: float) -> float:
    if not vals:
        return float("nan")
    s = sorted(vals)
    return s[min(len(s) - 1, int(q / 100 * len(s)))]


class Monitor:
    """snapshot() CPU seconds per component; run() samples machine busy fraction and loop lag."""

    def __init__(self, groups: dict[str, list[int]], period: float = 0.25) -> None:
        self.groups, self.period = groups, period
        self.busy: list[float] = []
        self.lag_ms: list[float] = []

    def snapshot(self) -> dict[str, float]:
        s = {g: sum(cpu_seconds(p) for p in pids) for g, pids in self.groups.items()}
        s["loadgen"] = time.process_time()
        s["machine"] = machine_busy_seconds()
        s["t"] = time.perf_counter()
        return s

    async def run(self) -> None:
        prev_busy, prev_t = machine_busy_seconds(), time.perf_counter()
        while True:
            target = time.perf_counter() + self.period
            await asyncio.sleep(self.period)
            now = time.perf_counter()
            self.lag_ms.append(max(0.0, now - target) * 1e3)
            b = machine_busy_seconds()
            self.busy.append((b - prev_busy) / max(1e-6, now - prev_t) / NCPU)
            prev_busy, prev_t = b, now

    def summary(self, a: dict, b: dict) -> dict:
        wall = max(1e-6, b["t"] - a["t"])
        cores = {g: (b[g] - a[g]) / wall for g in a if g not in ("t", "machine")}
        machine = (b["machine"] - a["machine"]) / wall
        cores["other"] = max(0.0, machine - sum(cores.values()))
        busy = machine / NCPU
        why = []
        if busy > BUSY_LIMIT:
            why.append(f"machine {busy:.0%} busy")
        if cores["loadgen"] > LOADGEN_LIMIT:
            why.append(f"load generator {cores['loadgen']:.0%} of a core")
        lag = _pct(self.lag_ms, 99)
        if lag > LAG_LIMIT_MS:
            why.append(f"loop lag p99 {lag:.0f} ms")
        return {"machine_busy": busy, "busy_p90": _pct(self.busy, 90), "cores": cores, "loop_lag_p99_ms": lag,
                "cpu_bound": bool(why), "why": "; ".join(why), "ncpu": NCPU}
