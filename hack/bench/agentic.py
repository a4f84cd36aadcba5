"""Agentic sessions: a tool-using agent's conversation, turn after turn, each turn resending the whole
context grown by the last answer and a tool result.

A session belongs to one of `groups` agents; the group's system prompt (its tool definitions,
system_len tokens) is shared by all its sessions. Turn 1 sends the system prompt and the task
(question_len tokens); every later turn adds the previous answer and a tool result of tool_min..tool_max
tokens, so the prompt grows every turn and all but the newest part is the previous turn's prompt: the
pod that served the last turn holds it. Every request carries `x-session-id` (the session), as agent
frameworks and gateways do.

Load mode `sessions`: sessions arrive as a Poisson process at the stage's rate (engine sessions/s) for
duration_s; each runs its `turns` turns one after another (a turn is sent when the previous answer is
complete, plus think_s), so a slow router also stretches the sessions and raises the concurrency, as
real agents do. Rows count requests (turns), like every other stage.
"""
from __future__ import annotations

import asyncio
import random

import orjson

from . import loadgen
from .loadgen import Progress, Rec, Stage, one, perf
from testbed.workload import text

SESSION_HEADER = "x-session-id"


class Turn:
    __slots__ = ("body", "headers", "session", "turn")

    def __init__(self, body: bytes, headers: dict, session: "Session", turn: int) -> None:
        self.body, self.headers, self.session, self.turn = body, headers, session, turn


class Session:
    def __init__(self, sid: str, system: str, task: str, rng: random.Random) -> None:
        self.sid, self.rng = sid, rng
        self.messages = [{"role": "system", "content": system}, {"role": "user", "content": task}]


class AgenticWorkload:
    def __init__(self, s, seed_offset: int = 0) -> None:
        self.w = s.workload
        self.model = s.pool.model
        self.seed = self.w.seed + seed_offset
        rng = random.Random(self.seed)
        self.systems = [text(rng, self.w.system_len) for _ in range(self.w.groups)]
        self.n = 0

    def new_session(self) -> Session:
        sid = self.n
        self.n += 1
        rng = random.Random(f"{self.seed}/{sid}")
        return Session(f"agent-{self.seed}-{sid}", self.systems[sid % len(self.systems)],
                       text(rng, self.w.question_len), rng)

    def output_len(self, rng: random.Random) -> int:
        w = self.w
        return rng.randint(w.output_min or 1, w.output_max) if w.output_max > 0 else w.output_len

    def turn(self, s: Session, k: int) -> Turn:
        body = {"model": self.model, "messages": s.messages, "max_tokens": self.output_len(s.rng),
                "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
        return Turn(orjson.dumps(body), {SESSION_HEADER: s.sid}, s, k)

    def answered(self, s: Session, answer: str) -> None:
        w = self.w
        s.messages.append({"role": "assistant", "content": answer})
        s.messages.append({"role": "user", "content": "Tool result: " + text(s.rng, s.rng.randint(w.tool_min, w.tool_max))})


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
