"""Agentic sessions on the wall clock (the turns themselves: testbed/agentic.py).

Load mode `sessions`: sessions arrive as a Poisson process at the stage's rate (engine sessions/s) for
duration_s; each runs its `turns` turns one after another (a turn is sent when the previous answer is
complete, plus think_s), so a slow router also stretches the sessions and raises the concurrency, as
real agents do. Rows count requests (turns), like every other stage.
"""
from __future__ import annotations

import asyncio
import random

from . import loadgen
from .loadgen import Progress, Rec, Stage, one, perf
from testbed.agentic import SESSION_HEADER, AgenticWorkload


async def run_stage(http, url: str, wl: AgenticWorkload, rate: float, wall_duration: float, drain_timeout: float,
                    seed: int, label: str, turns: int, think_wall: float) -> Stage:
    """Sessions arriving at `rate` per wall second for wall_duration, each sending its turns in turn."""
    st = Stage()
    rng = random.Random(seed)
    sessions: set[asyncio.Task] = set()
    st.t_start = perf()
    end = st.t_start + wall_duration
    prog = Progress(label)
    ticker = asyncio.create_task(prog.run(st))

    async def session() -> None:
        s = wl.new_session()
        for k in range(turns):
            item = wl.turn(s, k)
            rec = Rec(perf(), 0.0)
            st.recs.append(rec)
            answer = await one(http, url, item, rec, True)
            if not rec.ok:
                return                     # an agent whose call failed gives up the task
            wl.answered(s, answer)
            if think_wall > 0 and k + 1 < turns:
                await asyncio.sleep(think_wall)

    t_next = st.t_start
    while True:
        t_next += rng.expovariate(rate)
        if t_next >= end:
            break
        delay = t_next - perf()
        if delay > 0:
            await asyncio.sleep(delay)
        t = asyncio.create_task(session())
        sessions.add(t)
        t.add_done_callback(sessions.discard)
    return await loadgen.finish_stage(st, sessions, drain_timeout, ticker, prog)


__all__ = ["AgenticWorkload", "run_stage", "SESSION_HEADER", "loadgen"]
