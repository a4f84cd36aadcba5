"""The overhead benchmarks' open-loop load generator: requests of a fixed size sent at their scheduled
times (Poisson or evenly spaced) over raw keep-alive HTTP/1.1 connections (testbed.http1), whatever
the answers' pace; per run the latency percentiles, errors, the rate achieved, the generator's own
timer lag, and the CPU every process of the path used (testbed.procstat)."""
from __future__ import annotations

import asyncio
import math
import random
import statistics
import time

from testbed.http1 import Target, connect, prewarm
from testbed.procstat import cpu_seconds, machine_busy_seconds

perf = time.perf_counter


class Payload:
    """Completions bodies of a fixed size, each prompt starting with a unique 12-digit number (or,
    with Payload.shared, ending with it)."""

    counter = 0
    shared = False

    def __init__(self, size: int) -> None:
        rnd = random.Random(size)
        words = ["the", "model", "server", "gateway", "token", "cache", "prefix", "route", "endpoint", "pod",
                 "latency", "queue", "kv", "request", "prompt", "answer", "inference", "pool", "envoy", "picker"]
        pre = b'{"model":"m","prompt":"'
        post = b'","max_tokens":1}'
        fill_len = max(0, size - 13)
        text = []
        n = 0
        while n < fill_len:
            w = rnd.choice(words)
            text.append(w)
            n += len(w) + 1
        self.fill = " ".join(text).encode()[:fill_len]
        self.pre, self.post = pre, post
        length = len(pre) + 13 + len(self.fill) + len(post)
        self.head = (b"POST /v1/completions HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                     b"Content-Length: %d\r\n\r\n" % length)

    def parts(self) -> list[bytes]:
        Payload.counter += 1
        if Payload.shared:  # one long shared prefix, the unique number last: the prefix index's best case
            return [self.head, self.pre, self.fill, b" %012d" % Payload.counter, self.post]
        return [self.head, self.pre, b"%012d " % Payload.counter, self.fill, self.post]


class Run:
    def __init__(self, count: int) -> None:
        self.count = count
        self.lat = [math.nan] * count
        self.status = [0] * count
        self.lag = [0.0] * count
        self.done = 0
        self.finished = False
        self.first_send = 0.0
        self.last_done = 0.0
        self.fut = asyncio.get_running_loop().create_future()

    def complete(self, i: int, t0: float, status: int) -> None:
        if self.finished:
            return
        t1 = perf()
        self.lat[i] = t1 - t0
        self.status[i] = status
        self.last_done = t1
        self.done += 1
        if self.done == self.count and not self.fut.done():
            self.fut.set_result(None)


def offsets(count: int, rate: float, seed: int, arrival: str) -> list[float]:
    if arrival == "even":
        return [i / rate for i in range(count)]
    rnd = random.Random(seed)
    t, out = 0.0, []
    for _ in range(count):
        out.append(t)
        t += rnd.expovariate(rate)
    return out


def pct(sorted_vals: list[float], q: float) -> float:
    if not sorted_vals:
        return math.nan
    k = max(0, min(len(sorted_vals) - 1, math.ceil(q / 100 * len(sorted_vals)) - 1))
    return sorted_vals[k]


class Procs:
    """Processes whose CPU each run accounts for."""

    def __init__(self) -> None:
        self.pids: dict[str, int] = {}

    def sample(self) -> dict[str, float]:
        s = {name: cpu_seconds(pid) for name, pid in self.pids.items()}
        s["loadgen"] = time.process_time()
        s["machine"] = machine_busy_seconds()
        return s


async def run_load(target: Target, payload: Payload, rate: float, count: int, seed: int, arrival: str,
                   procs: Procs, timeout: float = 20.0) -> dict:
    loop = asyncio.get_running_loop()
    offs = offsets(count, rate, seed, arrival)
    await prewarm(target, min(512, max(8, int(rate * 0.01) + 4)))
    run = Run(count)
    opened0 = target.opened
    cpu0, w0 = procs.sample(), perf()

    async def send_new(i: int, t0: float, parts: list[bytes]) -> None:
        try:
            conn = await connect(target)
        except OSError:
            run.complete(i, t0, 598)
            return
        conn.send(run, i, t0, parts)

    def fire(i: int, intended: float) -> None:
        t0 = perf()
        run.lag[i] = t0 - intended
        parts = payload.parts()
        idle = target.idle
        while idle:
            conn = idle.pop()
            if not conn.closed:
                conn.send(run, i, t0, parts)
                return
        loop.create_task(send_new(i, t0, parts))

    start = perf() + 0.005
    run.first_send = start
    i = 0
    while i < count:
        now = perf()
        while i < count and start + offs[i] <= now:
            fire(i, start + offs[i])
            i += 1
        if i < count:
            delay = start + offs[i] - perf()
            await asyncio.sleep(delay if delay > 0.0005 else 0)
    sent_at = perf()
    try:
        await asyncio.wait_for(asyncio.shield(run.fut), timeout)
    except asyncio.TimeoutError:
        pass
    run.finished = True
    wall = perf() - w0
    cpu1 = procs.sample()
    # requests still in flight (timed out): drop their connections
    for c in list(target.idle):
        if c.req is not None:
            c.close()
    ok = sorted(run.lat[k] for k in range(count) if run.status[k] == 200)
    errors = count - len(ok)
    codes: dict[str, int] = {}
    for k in range(count):
        if run.status[k] != 200:
            key = str(run.status[k] or "timeout")
            codes[key] = codes.get(key, 0) + 1
    lags = sorted(run.lag)
    offered = count / (offs[-1] + 1.0 / rate) if count else rate  # the rate this (Poisson) draw really offers
    span = max(1e-9, (run.last_done or perf()) - run.first_send)
    return {
        "target": target.name, "rate": rate, "count": count, "ok": len(ok), "errors": errors, "codes": codes,
        "p50_ms": pct(ok, 50) * 1e3, "p90_ms": pct(ok, 90) * 1e3, "p99_ms": pct(ok, 99) * 1e3,
        "max_ms": (ok[-1] * 1e3 if ok else math.nan), "mean_ms": (statistics.fmean(ok) * 1e3 if ok else math.nan),
        "achieved_rps": len(ok) / span, "offered_rps": offered, "send_seconds": sent_at - start, "wall_s": wall,
        "lag_p99_ms": pct(lags, 99) * 1e3, "new_conns": target.opened - opened0,
        "cpu_s": {k: cpu1[k] - cpu0[k] for k in cpu0},
        "foreign_cpu_frac": max(0.0, (cpu1["machine"] - cpu0["machine"]) - sum(
            cpu1[k] - cpu0[k] for k in cpu0 if k != "machine")) / wall,
    }



async def warm(target: Target, payload: Payload, procs: Procs) -> dict:
    return await run_load(target, payload, 200.0, 20, 999, "even", procs, timeout=10)
