"""The load generator: aiohttp, streaming, open loop (Poisson arrivals) or closed loop (N in flight).

Per request it records, on the wall clock: send time, TTFT (first chunk that carries text), every
inter-chunk gap (ITL), end-to-end latency, and from the final usage chunk prompt, output and cached
tokens. The harness converts wall times to engine time. Arrival lag (how late a request left compared
with its Poisson schedule) is recorded too: a late load generator is a CPU-bound load generator.
"""
from __future__ import annotations

import asyncio
import math
import random
import sys
import time

import aiohttp
import orjson

from testbed.workload import Item, Workload

from .arrivals import Arrivals

perf = time.perf_counter


class Rec:
    __slots__ = ("t_send", "lag", "ttft", "e2e", "itl", "status", "error", "prompt_tokens", "out_tokens",
                 "cached_tokens", "chunks", "tenant", "reason")

    def __init__(self, t_send: float, lag: float, tenant: str = "") -> None:
        self.t_send, self.lag, self.tenant = t_send, lag, tenant
        self.reason = ""   # x-llm-d-request-dropped-reason of a refused request
        self.ttft = self.e2e = math.nan
        self.itl: list[float] = []
        self.status, self.error = 0, ""
        self.prompt_tokens = self.out_tokens = self.cached_tokens = self.chunks = 0

    @property
    def ok(self) -> bool:
        return self.status == 200 and not self.error


def _content(ev: dict) -> str | None:
    """The text a stream event carries ('' for role-only chat openers), None for the usage chunk."""
    ch = ev.get("choices")
    if not ch:
        return None
    c = ch[0]
    if "text" in c:
        return c["text"] or ""
    return (c.get("delta") or {}).get("content") or ""


async def one(http: aiohttp.ClientSession, url: str, item: Item, rec: Rec, want_text: bool) -> str:
    """Sends one streamed request; fills rec. Returns the generated text when want_text."""
    t0 = perf()
    last = None
    parts: list[str] = []
    try:
        headers = {"content-type": "application/json"}
        extra = getattr(item, "headers", None)      # a tenant's headers, an agentic session's x-session-id
        if extra:
            headers.update(extra)
        async with http.post(url, data=item.body, headers=headers) as r:
            rec.status = r.status
            if r.status != 200:
                rec.reason = r.headers.get("x-llm-d-request-dropped-reason", "")
                rec.error = f"http {r.status}: {(await r.read())[:200]!r}"
                return ""
            buf = b""
            async for data in r.content.iter_any():
                now = perf()
                buf += data
                while True:
                    k = buf.find(b"\n\n")
                    if k < 0:
                        break
                    line, buf = buf[:k].strip(), buf[k + 2:]
                    if not line.startswith(b"data:"):
                        continue
                    payload = line[5:].strip()
                    if payload == b"[DONE]":
                        continue
                    ev = orjson.loads(payload)
                    if ev.get("usage"):
                        u = ev["usage"]
                        rec.prompt_tokens = u.get("prompt_tokens") or 0
                        rec.out_tokens = u.get("completion_tokens") or 0
                        rec.cached_tokens = (u.get("prompt_tokens_details") or {}).get("cached_tokens") or 0
                    t = _content(ev)
                    if not t:          # usage chunk or a role-only opener: no token
                        continue
                    rec.chunks += 1
                    if want_text:
                        parts.append(t)
                    if last is None:
                        rec.ttft = now - t0
                    else:
                        rec.itl.append(now - last)
                    last = now
        rec.e2e = perf() - t0
        if rec.chunks == 0:
            rec.error = "no tokens streamed"
    except asyncio.TimeoutError:
        rec.error = "timeout"
    except (aiohttp.ClientError, OSError, ValueError) as e:
        rec.error = f"{type(e).__name__}: {e}"[:200]
    return "".join(parts)


class Progress:
    """A status line on stderr: every 2 s rewritten in place on a terminal, else every 15 s."""

    def __init__(self, label: str) -> None:
        self.label, self.t0 = label, perf()
        self.tty = sys.stderr.isatty()
        self.every = 2.0 if self.tty else 15.0

    async def run(self, stage: "Stage") -> None:
        while True:
            await asyncio.sleep(self.every)
            self.show(stage)

    def show(self, stage: "Stage", end: str = "") -> None:
        done = sum(1 for r in stage.recs if r.e2e == r.e2e or r.error)
        err = sum(1 for r in stage.recs if r.error)
        msg = (f"  {self.label}: {perf() - self.t0:5.0f}s sent {len(stage.recs)} done {done} "
               f"in flight {len(stage.recs) - done} errors {err}")
        if self.tty:
            sys.stderr.write("\r" + msg.ljust(100) + end)
        else:
            sys.stderr.write(msg + "\n")
        sys.stderr.flush()


class Stage:
    def __init__(self) -> None:
        self.recs: list[Rec] = []
        self.t_start = self.t_arrivals_end = self.t_end = 0.0
        self.drained = True


async def run_stage(http: aiohttp.ClientSession, url: str, wl: Workload, mode: str, level: float, wall_duration: float,
                    max_requests: int, drain_timeout: float, seed: int, label: str,
                    tenants: dict[str, float] | None = None, on_s: float = 0.0, off_s: float = 0.0) -> Stage:
    """One stage: open loop at `level` wall req/s (Poisson, or bursts: on_s of every on_s + off_s wall
    seconds at the rate that keeps the mean at `level`) or closed loop with `level` requests in flight,
    arrivals for wall_duration seconds (or max_requests), then waits for the stragglers. With tenants
    (name -> share of level), each tenant has its own Poisson arrivals at its share."""
    st = Stage()
    rng = random.Random(seed)
    tasks: set[asyncio.Task] = set()
    want_text = wl.wants_text()
    st.t_start = perf()
    end = st.t_start + wall_duration
    cap = max_requests or 1 << 62
    prog = Progress(label)
    ticker = asyncio.create_task(prog.run(st))

    async def send(item: Item, rec: Rec) -> None:
        text = await one(http, url, item, rec, want_text)
        if rec.ok:
            wl.done(item, text)

    if tenants:
        async def arrivals(name: str, rate: float, rng: random.Random) -> None:
            t_next = st.t_start
            while len(st.recs) < cap:
                t_next += rng.expovariate(rate)
                if t_next >= end:
                    return
                delay = t_next - perf()
                if delay > 0:
                    await asyncio.sleep(delay)
                rec = Rec(perf(), max(0.0, perf() - t_next), name)
                st.recs.append(rec)
                t = asyncio.create_task(send(wl.for_tenant(name), rec))
                tasks.add(t)
                t.add_done_callback(tasks.discard)
        await asyncio.gather(*(arrivals(n, level * x, random.Random(f"{seed}/{n}"))
                               for n, x in tenants.items() if x > 0))
    elif mode == "poisson":
        arrivals = Arrivals(rng, level, st.t_start, on_s, off_s)
        while len(st.recs) < cap:
            t_next = arrivals.next()
            if t_next >= end:
                break
            delay = t_next - perf()
            if delay > 0:
                await asyncio.sleep(delay)
            rec = Rec(perf(), max(0.0, perf() - t_next))
            st.recs.append(rec)
            t = asyncio.create_task(send(wl.next(), rec))
            tasks.add(t)
            t.add_done_callback(tasks.discard)
    else:
        async def worker() -> None:
            while perf() < end and len(st.recs) < cap:
                rec = Rec(perf(), 0.0)
                st.recs.append(rec)
                await send(wl.next(), rec)
        workers = [asyncio.create_task(worker()) for _ in range(int(level))]
        await asyncio.wait(workers, timeout=max(0.0, end - perf()))
        tasks.update(w for w in workers if not w.done())      # each finishes its last request in the drain
    return await finish_stage(st, tasks, drain_timeout, ticker, prog)


async def finish_stage(st: Stage, tasks: set, drain_timeout: float, ticker: asyncio.Task, prog: Progress) -> Stage:
    """Arrivals are over: wait up to drain_timeout for what is in flight, cancel the rest (its requests
    count as not finished), stop the progress line."""
    st.t_arrivals_end = perf()
    if tasks:
        _, pending = await asyncio.wait(set(tasks), timeout=drain_timeout)
        for t in pending:
            t.cancel()
        if pending:
            st.drained = False
            await asyncio.gather(*pending, return_exceptions=True)
            for r in st.recs:
                if r.e2e != r.e2e and not r.error:
                    r.error = "not finished at drain timeout"
    st.t_end = perf()
    ticker.cancel()
    prog.show(st, end="\n")
    return st


def session(request_timeout: float) -> aiohttp.ClientSession:
    conn = aiohttp.TCPConnector(limit=0, force_close=False, enable_cleanup_closed=True)
    return aiohttp.ClientSession(connector=conn, timeout=aiohttp.ClientTimeout(total=request_timeout),
                                 auto_decompress=False, skip_auto_headers=("User-Agent",))
