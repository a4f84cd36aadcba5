"""Agentic sessions, the requests: a tool-using agent's conversation, turn after turn, each turn
resending the whole context grown by the last answer and a tool result. The wall-clock harness
(hack/bench/agentic.py) and the planner (epp_plan) send the same turns.

A session belongs to one of `groups` agents; the group's system prompt (its tool definitions,
system_len tokens) is shared by all its sessions. Turn 1 sends the system prompt and the task
(question_len tokens); every later turn adds the previous answer and a tool result of tool_min..tool_max
tokens, so the prompt grows every turn and all but the newest part is the previous turn's prompt: the
pod that served the last turn holds it. Every request carries `x-session-id` (the session), as agent
frameworks and gateways do.
"""
from __future__ import annotations

import random

import orjson

from .workload import text

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
